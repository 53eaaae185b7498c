"""Request and response policies.

Before the call, in this order: ``models``, ``enforce_user_ids``, ``max_prompt_chars``,
``max_input_tokens``, ``max_tokens``, ``request_wordlists`` (all pure; every block they find
is reported in one 422), then ``auto_replies``, ``auto_moderate`` (the one with I/O, asked
only when nothing blocked) and ``retries``. After it: ``response_wordlists`` and
``prompt_reflection``, on whole answers and on streams.

The modules, one concept each: ``schema`` (the configuration), ``resolve`` (scopes →
``rules``), ``tighten`` and ``headers`` (what clients may change: only towards stricter),
``request`` (the request policies), ``wordlists``, ``scanner`` and ``stream`` (matching, in
pieces), ``reflection``, ``moderation``, ``auto_reply``, ``report`` (the record and the
error), ``engine`` (the hooks the request path calls), ``flagged`` (the CLI listing).

Nothing is imported here, so the configuration can load ``schema`` on its own.
"""

"""boto3 ``bedrock-runtime`` clients of a test gateway, and the Bedrock upstream they reach
(the fake, answering only requests signed with the gateway's own AWS key: the ``signing``
and ``bedrock`` fixtures of ``tests/gateway/conftest.py``)."""

from __future__ import annotations

import re
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from tests.conftest import FakeHandle, Gateway

AWS_KEY_ID = "AKIDTOKENSTILETEST01"
AWS_SECRET = "fake-aws-secret-0123456789abcdef"
SESSION = boto3.session.Session()
NO_RETRIES = BotoConfig(retries={"total_max_attempts": 1})


def bedrock_upstream(fake: FakeHandle, **extra: Any) -> dict[str, Any]:
    return {"upstreams": {"aws": {"kind": "bedrock", "region": "us-east-1",
                                  "base_url": fake.url, "aws_access_key_id": AWS_KEY_ID,
                                  "aws_secret_access_key": AWS_SECRET, **extra}}}


def runtime(gateway: Gateway, key: str, session: boto3.session.Session = SESSION) -> Any:
    """The gateway's tokenstile key is the access key id; the secret is not used."""
    return session.client("bedrock-runtime", region_name="us-east-1", endpoint_url=gateway.url,
                          aws_access_key_id=key, aws_secret_access_key="any-secret",
                          config=NO_RETRIES)


def assert_signed_upstream(record: Any, key: str) -> None:
    """The fake verified the signature with botocore (it answers 403 otherwise); the
    tokenstile key never left the gateway."""
    assert record.status == 200 and record.api_key == AWS_KEY_ID
    assert re.match(rf"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/\d{{8}}/us-east-1/bedrock/"
                    r"aws4_request, SignedHeaders=\S*host\S*x-amz-date, Signature=[0-9a-f]{64}$",
                    record.headers["authorization"])
    assert key not in str(record.headers)

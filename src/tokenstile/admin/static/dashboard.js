// tokenstile dashboard: small progressive enhancements. Every page works without them.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  function cellValue(row, index) {
    var cell = row.children[index];
    if (!cell) return "";
    var v = cell.getAttribute("data-value");
    return v === null ? cell.textContent.trim() : v;
  }

  function sortBy(table, th, index) {
    var kind = th.getAttribute("data-sort");
    var current = th.getAttribute("aria-sort");
    var dir = current === "descending" ? "ascending" : "descending";
    if (!current && kind === "text") dir = "ascending";
    table.querySelectorAll("thead th").forEach(function (other) {
      if (other !== th) other.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).filter(function (r) {
      return !r.querySelector(".empty");
    });
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index), order;
      if (kind === "number") {
        order = (parseFloat(x) || 0) - (parseFloat(y) || 0);
      } else {
        order = x.localeCompare(y, undefined, { numeric: true, sensitivity: "base" });
      }
      return dir === "ascending" ? order : -order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th[data-sort]").forEach(function (th, i) {
      var index = Array.prototype.indexOf.call(th.parentNode.children, th);
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      while (th.firstChild) button.appendChild(th.firstChild);
      th.appendChild(button);
      button.addEventListener("click", function () { sortBy(table, th, index); });
    });
  });

  document.querySelectorAll("[data-autosubmit]").forEach(function (input) {
    input.addEventListener("change", function () {
      if (input.form) input.form.requestSubmit ? input.form.requestSubmit() : input.form.submit();
    });
  });

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  });

  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.querySelector(button.getAttribute("data-copy"));
      if (!source) return;
      var text = source.textContent.trim();
      var done = function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { select(source); });
      } else {
        select(source);
      }
    });
  });

  function select(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
})();

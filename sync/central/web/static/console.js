// The console's little script: no inline handlers (the CSP forbids them).
(function () {
  "use strict";
  // "Select all" boxes toggle the checkboxes of their form's table (bulk download).
  document.querySelectorAll("input[data-select-all]").forEach(function (box) {
    box.addEventListener("change", function () {
      var form = box.form || box.closest("form");
      if (!form) { return; }
      form.querySelectorAll("input[type=checkbox][name=call]").forEach(function (c) { c.checked = box.checked; });
    });
  });
  // Buttons asking for confirmation first.
  document.querySelectorAll("[data-confirm]").forEach(function (el) {
    el.addEventListener("click", function (event) {
      if (!window.confirm(el.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
}());

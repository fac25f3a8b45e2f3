// Small page behaviour shared by every page. Delegated from the document, so it keeps
// working when a block (the actions of an experiment) is replaced by a fresh fragment.
(function () {
  "use strict";

  // A button with data-dialog-open="<id>" opens that native <dialog> (Cancel, Rollback).
  document.addEventListener("click", function (event) {
    var opener = event.target.closest("[data-dialog-open]");
    if (!opener) return;
    var dialog = document.getElementById(opener.getAttribute("data-dialog-open"));
    if (dialog && typeof dialog.showModal === "function") {
      event.preventDefault();
      dialog.showModal();
      var reason = dialog.querySelector("textarea");
      if (reason) reason.focus();
    }
  });

  // A select with data-submit-on-change submits its form when changed (the list's Sort);
  // here rather than in an onchange attribute, which the Content-Security-Policy refuses.
  document.addEventListener("change", function (event) {
    var select = event.target.closest("select[data-submit-on-change]");
    if (select && select.form) select.form.requestSubmit();
  });

  // The menu button of narrow screens opens and closes the navigation.
  document.addEventListener("click", function (event) {
    var toggle = event.target.closest(".menu-toggle");
    if (!toggle) return;
    var bar = toggle.closest(".topbar");
    var open = !bar.classList.contains("nav-open");
    bar.classList.toggle("nav-open", open);
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
  });

  // A submitted action form disables its button: one press, one request.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var submitter = event.submitter;
    if (!form.matches("form[method=post]") || !submitter || submitter.getAttribute("formmethod") === "dialog") return;
    window.setTimeout(function () { submitter.disabled = true; }, 0);
  });
})();

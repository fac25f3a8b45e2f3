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

  // Keyboard shortcuts: ? lists them, g e / g f / g t / g r move between pages, / searches.
  // Never while typing in a field, and never with Ctrl, Alt or Meta (the browser's own).
  var leader = null;
  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }
  function goTo(key) {
    var targets = document.getElementById("shortcut-targets");
    var names = { e: "experiments", f: "fleet", t: "triggers", r: "registry" };
    var url = targets && names[key] ? targets.getAttribute("data-" + names[key]) : null;
    if (url) window.location.assign(url);
  }
  function focusSearch() {
    var search = document.querySelector("main input[type=search]");
    if (search) { search.focus(); search.select(); return; }
    var targets = document.getElementById("shortcut-targets");
    if (targets) window.location.assign(targets.getAttribute("data-experiments") + "#search");
  }
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.altKey || event.metaKey || typing(event.target)) return;
    var open = document.querySelector("dialog[open]");
    if (open && open.id !== "shortcuts") return;
    if (leader) {
      window.clearTimeout(leader);
      leader = null;
      event.preventDefault();
      goTo(event.key);
      return;
    }
    if (event.key === "?") {
      var help = document.getElementById("shortcuts");
      if (help && !help.open) { event.preventDefault(); help.showModal(); }
    } else if (event.key === "g") {
      // The second key must follow within a second and a half.
      leader = window.setTimeout(function () { leader = null; }, 1500);
    } else if (event.key === "/") {
      event.preventDefault();
      focusSearch();
    }
  });
  // Arriving from "/" on another page: the search box takes the keyboard.
  if (window.location.hash === "#search") {
    var search = document.querySelector("main input[type=search]");
    if (search) search.focus();
  }

  // A submitted action form disables its button: one press, one request.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var submitter = event.submitter;
    if (!form.matches("form[method=post]") || !submitter || submitter.getAttribute("formmethod") === "dialog") return;
    window.setTimeout(function () { submitter.disabled = true; }, 0);
  });
})();

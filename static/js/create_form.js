// The create form: show the chosen recipe's parameter table and offer its defaults as
// the config example. The textarea is only refilled while it still holds an untouched
// example, so nothing a person typed is ever thrown away.
(function () {
  "use strict";
  var select = document.getElementById("id_recipe");
  var config = document.getElementById("id_config");
  var reset = document.getElementById("config-reset");
  var dataNode = document.getElementById("recipe-defaults");
  if (!select || !config || !dataNode) return;
  var defaults = JSON.parse(dataNode.textContent);

  function example(name) {
    return JSON.stringify(defaults[name] || {}, null, 2);
  }

  function isUntouchedExample(text) {
    var trimmed = text.trim();
    if (trimmed === "") return true;
    return Object.keys(defaults).some(function (name) { return trimmed === example(name); });
  }

  function showParams() {
    document.querySelectorAll(".recipe-params").forEach(function (node) {
      node.hidden = node.getAttribute("data-recipe") !== select.value;
    });
  }

  select.addEventListener("change", function () {
    showParams();
    if (isUntouchedExample(config.value)) config.value = example(select.value);
  });
  if (reset) {
    reset.addEventListener("click", function () { config.value = example(select.value); });
  }
  showParams();
})();

// The policy form: add condition/action rows from the formset's empty row, and preview the
// dry-run of the policy as it stands in the form (not saved) on a chosen experiment. The
// preview runs again, after a pause, whenever a field changes while an experiment is chosen.
(function () {
  "use strict";
  var form = document.getElementById("policy-form");
  if (!form) return;
  var select = document.getElementById("preview-experiment");
  var button = document.getElementById("preview-button");
  var out = document.getElementById("preview-result");
  var summary = document.getElementById("policy-summary");
  var timer = null;
  var latest = 0;

  document.querySelectorAll(".add-row").forEach(function (add) {
    add.addEventListener("click", function () {
      var prefix = add.getAttribute("data-prefix");
      var total = form.querySelector("#id_" + prefix + "-TOTAL_FORMS");
      var template = document.getElementById(prefix + "-empty");
      var html = template.innerHTML.replace(/__prefix__/g, total.value);
      var body = document.querySelector("#" + prefix + "-table tbody");
      body.insertAdjacentHTML("beforeend", html);
      total.value = String(Number(total.value) + 1);
    });
  });

  function text(tag, value, cls) {
    var node = document.createElement(tag);
    node.textContent = value;
    if (cls) node.className = cls;
    return node;
  }

  function showErrors(detail) {
    out.replaceChildren();
    var list = text("ul", "", "errorlist preview-errors");
    list.setAttribute("role", "alert");
    detail.forEach(function (item) {
      list.appendChild(text("li", item.loc.slice(1).join(" ") + ": " + item.msg));
    });
    out.appendChild(list);
  }

  function showVerdict(data) {
    out.replaceChildren();
    out.appendChild(text("p", data.passed ? "✔ It would fire: " + (data.would_run.join(", ") || "no action")
      : "✘ It would not fire" + (data.would_run.length ? "; fallback: " + data.would_run.join(", ") : ""),
    "preview-verdict " + (data.passed ? "passed" : "failed")));
    var table = document.createElement("table");
    table.className = "table compact";
    table.id = "preview-conditions";
    var head = document.createElement("tr");
    ["", "Condition", "Value", "Detail", "Near miss"].forEach(function (h) { head.appendChild(text("th", h)); });
    table.appendChild(head);
    data.conditions.forEach(function (row) {
      var tr = document.createElement("tr");
      tr.appendChild(text("td", row.passed ? "✔" : "✘"));
      tr.appendChild(text("td", row.condition));
      tr.appendChild(text("td", row.value === null ? "—" : String(row.value)));
      tr.appendChild(text("td", row.detail));
      tr.appendChild(text("td", row.near_miss ? "short by " + Number(row.short_by).toPrecision(3) : ""));
      table.appendChild(tr);
    });
    out.appendChild(table);
    if (summary) summary.textContent = data.summary;
  }

  function preview() {
    var ticket = ++latest;
    var body = new FormData(form);
    fetch(form.getAttribute("data-preview-url"), {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch", "Accept": "application/json" },
    }).then(function (response) {
      return response.json().then(function (data) { return { status: response.status, data: data }; });
    }).then(function (answer) {
      if (ticket !== latest) return; // an older answer arriving late
      if (answer.status === 200) showVerdict(answer.data);
      else if (answer.data && Array.isArray(answer.data.detail)) showErrors(answer.data.detail);
      else out.textContent = "Preview failed (" + answer.status + ").";
    }).catch(function () {
      if (ticket === latest) out.textContent = "Preview failed: the server did not answer.";
    });
  }

  button.addEventListener("click", preview);
  select.addEventListener("change", function () { if (select.value) preview(); });
  form.addEventListener("input", function (event) {
    if (event.target === select || !select.value) return;
    clearTimeout(timer);
    timer = setTimeout(preview, 400);
  });
  // A choice the browser restored (back/forward) is previewed at once.
  if (select.value) preview();
})();

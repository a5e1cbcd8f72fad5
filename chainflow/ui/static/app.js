// chainflow dashboard: the token is kept for this tab only (sessionStorage) so every
// action form can carry it without retyping; live confirmation bars over SSE.
(function () {
  "use strict";
  const KEY = "chainflow-ui-token";

  function fillTokens(root) {
    const saved = sessionStorage.getItem(KEY);
    root.querySelectorAll("input.token").forEach(function (input) {
      if (saved && !input.value) input.value = saved;
    });
  }

  document.addEventListener("submit", function (ev) {
    const input = ev.target.querySelector && ev.target.querySelector("input.token");
    if (input && input.value) sessionStorage.setItem(KEY, input.value);
  });

  function update(bar, p) {
    const fill = bar.querySelector(".fill");
    fill.style.width = p.percent + "%";
    fill.className = "fill s-" + p.state;
    bar.querySelector(".confirm-label").textContent = p.label;
    bar.dataset.live = p.state === "final" || p.state === "failed" ? "false" : "true";
    const row = document.getElementById("sub-" + p.id);
    if (row) {
      row.dataset.state = p.state;
      const badge = row.querySelector(".badge");
      if (badge) { badge.textContent = p.state; badge.className = "badge s-" + p.state; }
    }
  }

  function follow() {
    const bars = Array.from(document.querySelectorAll(".confirm[data-live=true]"));
    if (!bars.length || !window.EventSource) return;
    const byId = {};
    bars.forEach(function (b) { (byId[b.dataset.sub] = byId[b.dataset.sub] || []).push(b); });
    const source = new EventSource("/events/confirmations?ids=" + Object.keys(byId).join(","));
    source.addEventListener("progress", function (ev) {
      JSON.parse(ev.data).forEach(function (p) {
        (byId[String(p.id)] || []).forEach(function (bar) { update(bar, p); });
      });
    });
    source.addEventListener("done", function () { source.close(); });
  }

  document.addEventListener("DOMContentLoaded", function () { fillTokens(document); follow(); });
  document.addEventListener("htmx:afterSwap", function (ev) { fillTokens(ev.target); });
})();

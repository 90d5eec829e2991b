// linkflow console: small conveniences; every page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // "/" focuses the search box (when not typing elsewhere).
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    var typing = target && (target.tagName === "INPUT" || target.tagName === "SELECT" || target.tagName === "TEXTAREA");
    var search = document.getElementById("q");
    if (event.key === "/" && !typing && search) {
      event.preventDefault();
      search.focus();
    }
  });
  // Every time shown in UTC gets the reader's local time as a tooltip.
  document.querySelectorAll("time[datetime]").forEach(function (element) {
    var date = new Date(element.getAttribute("datetime"));
    if (!isNaN(date.getTime())) {
      element.title = date.toLocaleString();
    }
  });
  // The timeline's "expand every payload" button.
  var expand = document.getElementById("expand-all");
  if (expand) {
    expand.hidden = false;
    expand.addEventListener("click", function () {
      var details = document.querySelectorAll("table.timeline details");
      var open = expand.getAttribute("aria-pressed") !== "true";
      details.forEach(function (element) { element.open = open; });
      expand.setAttribute("aria-pressed", open ? "true" : "false");
      expand.textContent = open ? "Collapse every payload" : "Expand every payload";
    });
  }
});

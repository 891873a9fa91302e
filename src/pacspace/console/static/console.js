// pacspace console: the poll's progress and the invoice drop zone. The pages work without this script.
(function () {
  "use strict";
  var csrf = document.querySelector('meta[name="csrf"]');
  var token = csrf ? csrf.getAttribute("content") : "";

  function show(status) {
    var box = document.getElementById("poll");
    var bar = document.getElementById("poll-progress");
    var text = document.getElementById("poll-text");
    var button = document.getElementById("poll-now");
    if (!box) return;
    box.setAttribute("data-running", String(status.running));
    box.setAttribute("data-state", status.running ? "running" : status.ok === null ? "never" : status.ok ? "ok" : "failed");
    if (status.running) {
      bar.hidden = false;
      bar.max = Math.max(status.total, 1);
      bar.value = status.done;
      text.textContent = "Polling: " + status.stage + (status.total ? " " + status.done + "/" + status.total : "…");
      button.disabled = true;
    } else {
      bar.hidden = true;
      text.textContent = status.message;
    }
  }

  function watch() {
    fetch("/api/poll", {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (status) {
      if (status.running) {
        show(status);
        window.setTimeout(watch, 400);
      } else {
        window.location.reload();  // the page, as the finished poll left the verified copy
      }
    });
  }

  var form = document.getElementById("poll-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      fetch("/api/poll", {method: "POST", credentials: "same-origin", headers: {"X-Pacspace-CSRF": token}})
        .then(function (r) { return r.json(); })
        .then(function (status) { show(status); watch(); });
    });
    var box = document.getElementById("poll");
    if (box && box.getAttribute("data-running") === "true") watch();
  }

  var zone = document.getElementById("dropzone");
  if (zone) {
    var input = document.getElementById("invoice-file");
    zone.addEventListener("dragover", function (event) { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("over");
      if (event.dataTransfer && event.dataTransfer.files.length) {
        input.files = event.dataTransfer.files;
        document.getElementById("invoice-form").submit();
      }
    });
  }
})();

// Live updates for a job's page: its log and state from /jobs/<id>/events (server-sent events,
// fed by the same stream as WatchJob). Text only ever goes in through textContent.
"use strict";
(function () {
  const log = document.getElementById("log");
  const state = document.getElementById("state");
  if (!log || !log.dataset.events || !window.EventSource) {
    return;
  }
  const wasFinal = state && state.dataset.final === "true";
  const es = new EventSource(log.dataset.events);
  const show = (s) => {
    if (state) {
      state.textContent = s;
      state.className = "state " + s;
    }
  };
  es.addEventListener("log", (ev) => {
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent += JSON.parse(ev.data).text;
    if (atEnd) {
      log.scrollTop = log.scrollHeight;
    }
  });
  es.addEventListener("lifecycle", (ev) => show(JSON.parse(ev.data).state));
  es.addEventListener("finished", (ev) => {
    es.close();
    const s = JSON.parse(ev.data).state;
    show(s);
    if (state) {
      state.dataset.final = "true";
    }
    // The results and artifacts are rendered by the server: fetch the page once, now final.
    if (!wasFinal) {
      setTimeout(() => window.location.reload(), 1500);
    }
  });
})();

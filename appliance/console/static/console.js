// The console's live pages: listen to /api/v1/events (Server-Sent Events) and, within a second
// of a change, fetch this page again and swap its live parts (elements with `data-live` and an
// id) for the new ones. A live part holding the field someone is typing into waits until they
// leave it. The pages work without this script: it only saves a reload.
(function () {
  "use strict";

  // EventSource has no catch-all for named events: the types the outbox writes, by name.
  const TYPES = [
    "task.submitted", "task.started", "task.resumed", "task.succeeded", "task.failed",
    "task.retry", "task.released", "task.waiting", "task.cancelled", "task.cancel_requested",
    "task.retried", "task.requeued", "step.completed", "step.failed", "approval.requested",
    "approval.voted", "approval.decided", "lease.granted", "exposure.violation",
    "exposure.resolved", "secret.overdue",
  ];
  const DEBOUNCE_MS = 100;

  const body = document.body;
  const parts = () => Array.from(document.querySelectorAll("[data-live][id]"));
  if (!window.EventSource || parts().length === 0) {
    return;
  }
  const task = body.dataset.liveTask || "";
  const badge = document.getElementById("live-state");
  let timer = null;
  let busy = false;
  let again = false;

  function typing(part) {
    const active = document.activeElement;
    return active !== null && part.contains(active) &&
      (active.tagName === "INPUT" || active.tagName === "TEXTAREA" || active.tagName === "SELECT");
  }

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (response.ok) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const part of parts()) {
          const next = fresh.getElementById(part.id);
          if (next === null || next.innerHTML === part.innerHTML) {
            continue;
          }
          if (typing(part)) {
            part.addEventListener("focusout", schedule, { once: true });
            continue;
          }
          part.replaceWith(document.importNode(next, true));
        }
        body.dataset.liveUpdates = String(Number(body.dataset.liveUpdates || "0") + 1);
      }
    } finally {
      busy = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  }

  function schedule() {
    if (timer === null) {
      timer = window.setTimeout(function () {
        timer = null;
        refresh();
      }, DEBOUNCE_MS);
    }
  }

  function changed(event) {
    if (task !== "") {
      const data = JSON.parse(event.data);
      if (String(data.task_id) !== task) {
        return;
      }
    }
    schedule();
  }

  const source = new EventSource("/api/v1/events");
  for (const type of TYPES) {
    source.addEventListener(type, changed);
  }
  source.addEventListener("open", function () {
    body.dataset.live = "on";
    if (badge !== null) {
      badge.hidden = false;
    }
  });
  source.addEventListener("error", function () {
    body.dataset.live = "off";
    if (badge !== null) {
      badge.hidden = true;
    }
  });
})();

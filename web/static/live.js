// Live updates for the fleet and job pages over Server-Sent Events.
// The pages are complete without this script; it only keeps them current.
// Data from the server is inserted as text (textContent), never as HTML.
(function () {
  "use strict";
  var root = document.getElementById("live-root");
  if (!root || !root.getAttribute("data-live") || !window.EventSource) return;
  var status = document.getElementById("live-status");
  function setStatus(text, on) {
    if (!status) return;
    status.hidden = false;
    status.textContent = text;
    status.className = "live-status" + (on ? "" : " off");
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function field(row, name) { return row.querySelector('[data-field="' + name + '"]'); }
  function setState(node, state) {
    if (!node) return;
    node.textContent = state;
    node.className = "state state-" + state;
  }

  var es = new EventSource(root.getAttribute("data-live"));
  es.onopen = function () { setStatus("live", true); };
  es.onerror = function () { setStatus("reconnecting", false); };

  // ---- fleet page ----
  es.addEventListener("fleet", function (ev) {
    var data = JSON.parse(ev.data);
    var online = 0, busy = 0;
    (data.boards || []).forEach(function (b) {
      if (b.state !== "offline") online++;
      if (b.job) busy++;
      var row = null;
      document.querySelectorAll("tr[data-board]").forEach(function (r) {
        if (r.getAttribute("data-board") === b.name) row = r;
      });
      if (!row) return;
      setState(field(row, "state"), b.state);
      var k = field(row, "kernel"); if (k) k.textContent = b.kernel;
      var hb = field(row, "heartbeat"); if (hb) hb.textContent = b.heartbeat;
      var cell = field(row, "job");
      if (!cell) return;
      cell.textContent = "";
      if (b.job) {
        var a = el("a", null, "job " + b.job.id);
        a.href = "/jobs/" + encodeURIComponent(b.job.id);
        cell.appendChild(a);
        cell.appendChild(document.createTextNode(" "));
        cell.appendChild(el("span", "muted", b.job.plan + " on " + b.job.commit_short));
        var bar = el("div", "progress"), fill = el("span");
        fill.style.width = b.job.pct + "%";
        bar.appendChild(fill);
        cell.appendChild(bar);
        cell.appendChild(el("span", "progress-text", "cycle " + b.job.done + " of " + b.job.total));
      } else {
        cell.appendChild(el("span", "muted", "–"));
      }
    });
    var sum = document.getElementById("fleet-summary");
    if (sum && data.boards) sum.textContent = online + " of " + data.boards.length + " boards online, " + busy + " busy";
    (data.runs || []).forEach(function (r) {
      var row = document.querySelector('tr[data-run="' + Number(r.id) + '"]');
      if (!row) return;
      var done = field(row, "done");
      if (done) {
        done.textContent = r.jobs_done + "/" + r.jobs_total + " done";
        if (r.jobs_failed > 0) {
          done.appendChild(document.createTextNode(", "));
          done.appendChild(el("span", "bad", r.jobs_failed + " failed"));
        }
      }
      (r.jobs || []).forEach(function (j) {
        var chip = row.querySelector('a[data-job="' + Number(j.id) + '"]');
        if (chip) { chip.textContent = j.board + ": " + j.state; chip.className = "state state-" + j.state; }
      });
    });
  });

  // ---- job page ----
  es.addEventListener("job", function (ev) {
    var j = JSON.parse(ev.data);
    setState(document.getElementById("job-state"), j.state);
    var c = document.getElementById("job-cycles");
    if (c) c.textContent = j.done + " of " + j.total + (j.failed_cycle ? ", failed at cycle " + j.failed_cycle : "");
    var bar = document.getElementById("job-bar");
    if (bar) bar.style.width = j.pct + "%";
    var r = document.getElementById("job-reason");
    if (r && j.reason) r.textContent = j.reason;
  });
  es.addEventListener("cycles", function (ev) {
    var table = document.getElementById("cycles");
    if (!table || table.getAttribute("data-append") !== "1") return;
    var body = table.tBodies[0];
    JSON.parse(ev.data).forEach(function (c) {
      var tr = document.createElement("tr");
      if (!c.alive) tr.className = "dead";
      [c.cycle, c.action, c.delay_ms, c.state_reached, c.final_state, c.cancel_ms, c.progress_ms].forEach(function (v) {
        tr.appendChild(el("td", null, v));
      });
      var alive = el("td");
      if (c.alive) alive.textContent = "yes"; else alive.appendChild(el("strong", "bad", "no"));
      tr.appendChild(alive);
      tr.appendChild(el("td", null, c.wall_ms));
      tr.appendChild(el("td", null, c.stage2));
      body.appendChild(tr);
    });
  });
  es.addEventListener("log", function (ev) {
    var pre = document.getElementById("tail");
    if (!pre) return;
    var stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    JSON.parse(ev.data).lines.forEach(function (l) {
      pre.appendChild(el("span", "line" + (l.a ? " alarm" : ""), l.t));
    });
    while (pre.childNodes.length > 1000) pre.removeChild(pre.firstChild);
    if (stick) pre.scrollTop = pre.scrollHeight;
  });
  es.addEventListener("end", function () {
    es.close();
    setStatus("finished", false);
  });
})();

// The call page's player and waveform: two lanes (agent, caller) from peaks.json, markers, click to seek.
// Loaded from the page (no inline script); the audio URL carries a listen token made here, so the
// server logs one listen per page view rather than one per Range request.
(function () {
  "use strict";
  var section = document.getElementById("media");
  if (!section) { return; }
  var player = document.getElementById("player");
  var canvas = document.getElementById("waveform");
  var status = document.getElementById("waveform-status");
  var list = document.getElementById("waveform-markers");
  var COLOURS = {"announcement": "#2a7d2e", "tone": "#1f5fbf", "pause": "#888888", "mute": "#888888",
                 "masked-dtmf": "#b06000", "flag": "#b3261e", "opt-out": "#b3261e", "private": "#b3261e"};
  var LABELS = {"announcement": "Announcement", "tone": "Warning tone", "pause": "Pause", "mute": "Mute",
                "masked-dtmf": "Masked DTMF", "flag": "Flag", "opt-out": "Opt-out", "private": "Private"};
  var data = null;

  function token() {
    var bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function clock(ms) {
    var s = Math.floor(ms / 1000);
    return Math.floor(s / 60) + ":" + ("0" + (s % 60)).slice(-2) + "." + Math.floor((ms % 1000) / 100);
  }

  function durationMs() {
    if (data && data.duration_ms) { return data.duration_ms; }
    return isFinite(player.duration) ? player.duration * 1000 : 0;
  }

  function draw() {
    var ctx = canvas.getContext("2d");
    var w = canvas.width, h = canvas.height, half = h / 2, total = durationMs();
    ctx.clearRect(0, 0, w, h);
    if (data && data.lanes) {
      data.lanes.forEach(function (lane, i) {
        var mid = half * i + half / 2, n = lane.min.length;
        ctx.fillStyle = i === 0 ? "#2d5f8a" : "#8a4b2d";
        for (var x = 0; x < w; x++) {
          var a = Math.floor(x * n / w), b = Math.max(a + 1, Math.floor((x + 1) * n / w));
          var lo = 127, hi = -127;
          for (var k = a; k < b && k < n; k++) { lo = Math.min(lo, lane.min[k]); hi = Math.max(hi, lane.max[k]); }
          if (hi < lo) { continue; }
          var top = mid - hi / 127 * (half / 2 - 2), bottom = mid - lo / 127 * (half / 2 - 2);
          ctx.fillRect(x, top, 1, Math.max(1, bottom - top));
        }
      });
      ctx.fillStyle = "#d0d4da";
      ctx.fillRect(0, half, w, 1);
    }
    if (data && total > 0) {
      data.markers.forEach(function (m) {
        var x0 = m.at_ms / total * w;
        var x1 = m.end_ms === null ? x0 + 2 : Math.max(x0 + 2, m.end_ms / total * w);
        ctx.fillStyle = COLOURS[m.kind] || "#000";
        ctx.globalAlpha = m.end_ms === null ? 0.9 : 0.25;
        ctx.fillRect(x0, 0, x1 - x0, h);
        ctx.globalAlpha = 1;
      });
      ctx.fillStyle = "#000";
      ctx.fillRect(player.currentTime * 1000 / total * w, 0, 1, h);
    }
  }

  function seek(ms) {
    player.currentTime = ms / 1000;
    draw();
  }

  function showMarkers() {
    data.markers.forEach(function (m) {
      var item = document.createElement("li");
      var button = document.createElement("button");
      button.type = "button";
      button.className = "marker marker-" + m.kind;
      button.dataset.kind = m.kind;
      button.dataset.atMs = m.at_ms;
      button.textContent = (LABELS[m.kind] || m.kind) + " " + clock(m.at_ms) +
        (m.end_ms === null ? "" : "\u2013" + clock(m.end_ms));
      button.addEventListener("click", function () { seek(m.at_ms); });
      item.appendChild(button);
      list.appendChild(item);
    });
  }

  canvas.addEventListener("click", function (event) {
    var box = canvas.getBoundingClientRect(), total = durationMs();
    if (total > 0) { seek((event.clientX - box.left) / box.width * total); }
  });
  player.addEventListener("timeupdate", draw);
  player.addEventListener("seeked", draw);
  player.src = section.dataset.audio + "?listen=" + token();
  // A link to a moment of the call (a search hit: #t=<ms>) starts the player there.
  var moment = /^#t=([0-9]{1,9})$/.exec(window.location.hash);
  if (moment) {
    player.addEventListener("loadedmetadata", function () { seek(parseInt(moment[1], 10)); }, {once: true});
  }

  fetch(section.dataset.peaks, {credentials: "same-origin"}).then(function (response) {
    if (!response.ok) { throw new Error("the waveform could not be loaded (" + response.status + ")"); }
    return response.json();
  }).then(function (body) {
    data = body;
    status.textContent = body.pending || body.problem || "";
    canvas.dataset.drawn = body.lanes ? "yes" : "no";
    showMarkers();
    draw();
  }).catch(function (error) { status.textContent = error.message; });
}());

// The call page's QA helpers (console-qa): a comment's position from the player's time, and seeking the
// player to a comment. Loaded from the page (no inline script); does nothing where its elements are absent.
(function () {
  "use strict";
  var player = document.getElementById("player");
  var position = document.getElementById("comment-position");
  var now = document.getElementById("comment-now");
  var form = document.getElementById("comment-form");

  function playerMs() {
    return player && isFinite(player.currentTime) ? Math.floor(player.currentTime * 1000) : 0;
  }

  if (position && now) {
    position.addEventListener("input", function () { position.dataset.touched = "1"; });
    now.addEventListener("click", function () {
      position.value = String(playerMs());
      position.dataset.touched = "1";
    });
  }
  if (form && position) {
    // A comment written while the call plays is placed where the player is, unless a time was typed.
    form.addEventListener("submit", function () {
      if (!position.dataset.touched) { position.value = String(playerMs()); }
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-seek-ms]"), function (button) {
    button.addEventListener("click", function () {
      if (!player) { return; }
      player.currentTime = Number(button.dataset.seekMs) / 1000;
      player.play();
    });
  });
}());

// Live refresh of the overview: re-fetch its sections every few seconds and swap them in.
// Plain script, same origin only (the console's CSP allows nothing else).
"use strict";

(function () {
  const live = document.getElementById("live");
  if (!live) {
    return;
  }
  const url = live.dataset.refreshUrl;
  const seconds = Number(live.dataset.refreshSeconds || "5");
  const state = document.getElementById("refresh-state");

  function say(text) {
    if (state) {
      state.textContent = text;
    }
  }

  async function refresh() {
    let response;
    try {
      response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    } catch (error) {
      say("(the service did not answer; retrying)");
      return true;
    }
    if (response.redirected || response.status === 403) {
      say("(session ended: reload the page to sign in again)");
      return false;
    }
    if (!response.ok) {
      say("(refresh failed: HTTP " + response.status + "; retrying)");
      return true;
    }
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.body;
    live.replaceChildren(...Array.from(fresh.childNodes));
    say("");
    return true;
  }

  function schedule() {
    window.setTimeout(async function () {
      if (await refresh()) {
        schedule();
      }
    }, seconds * 1000);
  }

  schedule();
})();

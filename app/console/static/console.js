// Live refresh: every element with data-refresh-url (the overview's sections, the first page of
// the task list) re-fetches that fragment every few seconds and swaps it in when it changed.
// Plain script, same origin only (the console's CSP allows nothing else).
"use strict";

(function () {
  function live(target) {
    const url = target.dataset.refreshUrl;
    const seconds = Number(target.dataset.refreshSeconds || "5");
    const state = document.getElementById(target.dataset.refreshState || "");
    let last = null;

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
      const text = await response.text();
      if (text !== last) {
        last = text;
        const fresh = new DOMParser().parseFromString(text, "text/html").body;
        target.replaceChildren(...Array.from(fresh.childNodes));
      }
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
  }

  document.querySelectorAll("[data-refresh-url]").forEach(live);
})();

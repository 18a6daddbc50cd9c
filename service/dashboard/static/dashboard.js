// The dashboard's only script: live regions, the cancel confirmation, chart tooltips. No framework, no network
// beyond this service. The API key never reaches it: the session is an httpOnly cookie the script cannot read.
"use strict";

const LIVE_HEADER = "X-Dashboard-Live";

function refreshLive(region) {
  const every = Number(region.dataset.liveMs) || 1500;
  async function tick() {
    if (region.querySelector("[data-done]")) return;  // nothing on this page can change any more
    if (document.visibilityState === "visible") {
      try {
        const response = await fetch(location.href, {headers: {[LIVE_HEADER]: "1"}, credentials: "same-origin",
                                                      cache: "no-store"});
        if (response.status === 401) { location.assign("/dashboard/sign-in"); return; }
        if (response.ok) {
          const html = await response.text();
          if (html !== region.dataset.last) { region.innerHTML = html; region.dataset.last = html; }
        }
      } catch (error) {
        // the service is restarting or the network is away: keep the last view and try again
      }
    }
    setTimeout(tick, every);
  }
  setTimeout(tick, every);
}

function confirmCancel(jobId) {
  const dialog = document.getElementById("confirm-cancel");
  const form = dialog.querySelector("form");
  form.action = "/dashboard/jobs/" + encodeURIComponent(jobId) + "/cancel";
  form.elements.back.value = location.pathname + location.search;
  dialog.querySelector("[data-slot=job]").textContent = jobId.slice(0, 8);
  dialog.showModal();
}

function showTip(event) {
  const tip = document.getElementById("tip");
  const mark = event.target.closest("[data-tip]");
  if (!tip) return;
  if (!mark) { tip.hidden = true; return; }
  tip.textContent = mark.dataset.tip;
  tip.hidden = false;
  const x = Math.min(event.clientX + 12, window.innerWidth - tip.offsetWidth - 8);
  tip.style.left = Math.max(x, 8) + "px";
  tip.style.top = (event.clientY + 14) + "px";
}

document.addEventListener("DOMContentLoaded", () => {
  const region = document.getElementById("live");
  if (region) refreshLive(region);
  document.addEventListener("click", (event) => {
    const cancel = event.target.closest("[data-cancel]");
    if (cancel) confirmCancel(cancel.dataset.cancel);
    const close = event.target.closest("[data-close]");
    if (close) close.closest("dialog").close();
  });
  document.addEventListener("pointermove", showTip);
  document.addEventListener("focusin", (event) => { if (event.target.closest("[data-tip]")) showTip(event); });
});

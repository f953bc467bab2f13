// The few behaviours the pages need beyond links, forms and htmx.

// Copy URL: the session link, made absolute, goes on the clipboard, and the button says so for a while, also when a
// change pushed meanwhile redraws it (labelCopyButtons runs after every swap, below).
const COPIED_MS = 2000;
const copiedAt = new Map();  // link -> when it was copied

function labelCopyButtons() {
  for (const button of document.querySelectorAll("[data-copy]")) {
    const copied = Date.now() - (copiedAt.get(button.dataset.copy) ?? -Infinity) < COPIED_MS;
    button.textContent = copied ? "Copied" : "Copy URL";
  }
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const url = new URL(button.dataset.copy, location.href).href;
  if (!navigator.clipboard) {
    // Browsers allow the clipboard only on https and localhost: show the link to copy by hand.
    window.prompt("Copy this link to the session:", url);
    return;
  }
  await navigator.clipboard.writeText(url);
  copiedAt.set(button.dataset.copy, Date.now());
  labelCopyButtons();
  setTimeout(labelCopyButtons, COPIED_MS);
});

// Forms that destroy something ask first. Stop also says who is connected now, from the studio's avatars as they
// were last pushed (``data-connected`` names them), so that nobody's work is cut off unawares.
document.addEventListener("submit", (event) => {
  let question = event.target.dataset.confirm;
  const avatars = event.target.dataset.connected && document.getElementById(event.target.dataset.connected);
  if (avatars) {
    const connected = [...avatars.querySelectorAll(".avatar")].map((avatar) => avatar.title);
    question += connected.length ? `\n\nConnected now: ${connected.join("; ")}.` : "\n\nNobody is connected now.";
  }
  if (question && !window.confirm(question)) event.preventDefault();
});

// An open actions menu closes on Escape (focus returns to its button) and on a click outside it.
document.addEventListener("keydown", (event) => {
  const menu = event.key === "Escape" && event.target.closest("details.menu[open]");
  if (menu) {
    menu.open = false;
    menu.querySelector("summary").focus();
  }
});
document.addEventListener("click", (event) => {
  for (const menu of document.querySelectorAll("details.menu[open]")) {
    if (!menu.contains(event.target)) menu.open = false;
  }
});

// The studio list's refreshes (once its socket opens, and while it is down) wait while an actions menu is open, so
// that the menu stays open. (Here rather than
// in an hx-trigger filter: htmx evaluates those with eval, which the platform's Content-Security-Policy forbids.)
document.addEventListener("htmx:beforeRequest", (event) => {
  if (event.detail.elt.id === "studio-table" && document.querySelector("details.menu[open]")) {
    event.preventDefault();
  }
});
// Nor does an answer asked for before the menu opened replace the table under it.
document.addEventListener("htmx:beforeSwap", (event) => {
  if (event.detail.target.id === "studio-table" && document.querySelector("details.menu[open]")) {
    event.detail.shouldSwap = false;
  }
});

// Live pages: the platform pushes each change of the studios shown over the page's socket (hx-ws swaps the
// fragments it sends by id). Each time the socket opens the page asks once for its live part, for what changed
// between its render (or the socket's loss) and now. While the socket is down the page says it is reconnecting
// and asks for its live part every few seconds instead. The member's own requests for that part (a search) come
// first: one asked for meanwhile cancels such a refresh, and none starts while one is under way (hx-sync), so that
// a refresh of the page as it was never replaces what the member just asked for.
const FALLBACK_POLL_MS = 3000;
let fallbackPoll = null;
const refresher = document.createElement("span");
refresher.hidden = true;

function refreshLivePart(socketElt) {
  const target = socketElt.dataset.live;
  if (!document.querySelector(target)) return Promise.resolve();
  refresher.setAttribute("hx-sync", `${target}:abort`);
  if (!refresher.isConnected) document.body.append(refresher);
  return htmx.ajax("GET", location.href, { source: refresher, target, swap: "outerHTML" });
}

// A studio added by someone else: the list asks for itself again, unless it shows the studio already.
document.addEventListener("htmx:oobAfterSwap", (event) => {
  const added = event.target;
  if (added.id !== "studio-added" || document.getElementById(`studio-${added.dataset.studio}`)) return;
  const socketElt = document.querySelector("[ws-connect][data-live]");
  if (socketElt) refreshLivePart(socketElt);
});

document.addEventListener("htmx:wsOpen", async (event) => {
  const socketElt = event.detail.elt;
  if (!socketElt.dataset.live) return;
  clearInterval(fallbackPoll);
  fallbackPoll = null;
  document.getElementById("live-state").hidden = true;
  await refreshLivePart(socketElt);
  document.body.dataset.live = "connected";
});

document.addEventListener("htmx:wsClose", (event) => {
  const socketElt = event.detail.elt;
  if (!socketElt.dataset.live || fallbackPoll !== null) return;
  document.getElementById("live-state").hidden = false;
  document.body.dataset.live = "reconnecting";
  fallbackPoll = setInterval(() => refreshLivePart(socketElt), FALLBACK_POLL_MS);
});

// Elapsed times (a start's, a stop's) tick every second, from when the server says it began.
setInterval(() => {
  for (const time of document.querySelectorAll("time[data-elapsed-since]")) {
    const seconds = Math.max(0, Math.floor((Date.now() - Date.parse(time.dataset.elapsedSince)) / 1000));
    time.textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
  }
}, 1000);

// A "Starting …" or "Stopping …" message goes once its studio no longer starts or stops: the page shows where it
// stands. (Its classes name the status it follows, "while-starting", and the studio, "studio-<id>".)
function dropSettledMessages() {
  for (const message of document.querySelectorAll(".message.while-starting, .message.while-stopping")) {
    const status = [...message.classList].find((name) => name.startsWith("while-")).slice("while-".length);
    const id = [...message.classList].find((name) => /^studio-\d+$/.test(name));
    const badge = id && document.querySelector(
      `#${id} .badge, #studio-status[data-studio="${id.slice("studio-".length)}"] #status-badge`);
    if (badge && badge.textContent.trim() !== status) message.remove();
  }
}
function afterSwap() {
  dropSettledMessages();
  labelCopyButtons();
}
document.addEventListener("htmx:wsAfterMessage", afterSwap);
document.addEventListener("htmx:afterSwap", afterSwap);

// The few behaviours the pages need beyond links, forms and htmx.

// Copy URL: the session link, made absolute, goes on the clipboard, and the button says so.
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
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy URL"; }, 2000);
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

// The studio list's polling waits while an actions menu is open, so that the menu stays open. (Here rather than
// in an hx-trigger filter: htmx evaluates those with eval, which the platform's Content-Security-Policy forbids.)
document.addEventListener("htmx:beforeRequest", (event) => {
  if (event.detail.elt.id === "studio-table" && document.querySelector("details.menu[open]")) {
    event.preventDefault();
  }
});

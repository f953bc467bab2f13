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

// Forms that destroy something ask first.
document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
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

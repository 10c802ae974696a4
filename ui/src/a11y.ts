// Keyboard access to what scrolls (WCAG 2.1.1; axe-core's scrollable-region-focusable):
// a table wrapper or a task log whose content overflows gets a tab stop, so arrow keys
// scroll it; one that fits has none (no useless tab stops). Watched in one place for
// every view: the DOM's changes (a poll's new rows) and the window's size.
const SCROLLERS = ".table-wrap, .task-log";

function update(root: HTMLElement): void {
  for (const el of root.querySelectorAll<HTMLElement>(SCROLLERS)) {
    // a view's own tab stop (a log that fills as lines arrive): kept, so there is no
    // moment, between new lines and the next frame, when it scrolls without one
    if (el.dataset.tabstop === "always") continue;
    const scrolls = el.scrollWidth > el.clientWidth || el.scrollHeight > el.clientHeight;
    if (scrolls && !el.hasAttribute("tabindex")) el.tabIndex = 0;
    else if (!scrolls && el.getAttribute("tabindex") === "0") el.removeAttribute("tabindex");
  }
}

export function watchScrollRegions(root: HTMLElement): void {
  let queued = false;
  const schedule = () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; update(root); });
  };
  // attributes are not observed: setting tabindex here does not wake the observer
  new MutationObserver(schedule).observe(root, { childList: true, subtree: true, characterData: true });
  window.addEventListener("resize", schedule);
  schedule();
}

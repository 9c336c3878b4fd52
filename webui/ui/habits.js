// Keyboard and mouse habits of A1111 users (see webui/ui/habits.py, which puts
// window.webuiHabits = {tabs, labels, sound} before this script):
// - Ctrl+Enter (Cmd+Enter) clicks Generate of the open generation tab;
// - Escape clicks its Interrupt while a job of this page runs there (not while a
//   dropdown or an image preview takes the key);
// - Ctrl+Up / Ctrl+Down in a prompt box change the weight of the selection, or of the
//   word, (group) or <extra network> at the caret, by the keyedit_precision_* options;
// - a right-click on Generate opens "Generate forever" / "Cancel generate forever": the
//   tab clicks Generate again each time its job has ended, until cancelled or refused;
// - a sound when a job of this page ends, if the notification_audio option is on and the
//   job took at least notification_min_seconds.
// The server calls started(tab) on each Generate and ended(tab, ok) when the job's event
// ends, and setOptions(options) with the options above when the page loads.
(() => {
  const config = window.webuiHabits || {};
  const tabs = config.tabs || [];
  const labels = config.labels || {};
  const DELIMITERS = ".,\\/!?%^*;:{}=`~() \r\n\t";
  let options = {
    keyedit_precision_attention: 0.1, keyedit_precision_extra: 0.05,
    notification_audio: false, notification_min_seconds: 10, notification_volume: 100,
  };
  const state = Object.fromEntries(tabs.map((t) => [t, { starts: [], forever: false }]));
  const button = (tab, kind) => document.querySelector(`#${tab}_${kind}`);
  const shown = (el) => !!el && el.offsetParent !== null;
  const openTab = () => tabs.find((t) => shown(button(t, "generate")));

  // ---- the sound ----------------------------------------------------------------------
  let audio = null;
  const wakeAudio = () => {  // browsers allow sound only after a click or key press
    if (config.sound || audio) return;
    const Context = window.AudioContext || window.webkitAudioContext;
    if (Context) audio = new Context();
  };
  const beep = () => {
    const volume = Math.max(0, Math.min(1, (options.notification_volume ?? 100) / 100));
    if (config.sound) {
      const player = new Audio(config.sound);
      player.volume = volume;
      player.play().catch(() => {});
      return;
    }
    if (!audio) return;
    if (audio.state === "suspended") audio.resume();
    const now = audio.currentTime;
    [[880, 0], [1320, 0.16]].forEach(([hz, at]) => {
      const tone = audio.createOscillator();
      const gain = audio.createGain();
      tone.frequency.value = hz;
      gain.gain.setValueAtTime(0.0001, now + at);
      gain.gain.exponentialRampToValueAtTime(0.3 * volume + 0.0001, now + at + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + at + 0.15);
      tone.connect(gain).connect(audio.destination);
      tone.start(now + at);
      tone.stop(now + at + 0.16);
    });
    window.webuiHabits.beeps = (window.webuiHabits.beeps || 0) + 1;
  };

  // ---- what the server calls ------------------------------------------------------------
  const started = (tab) => {
    wakeAudio();
    if (state[tab]) state[tab].starts.push(Date.now());
  };
  const ended = (tab, ok) => {
    const s = state[tab];
    if (!s) return;
    const start = s.starts.shift();
    const seconds = start === undefined ? 0 : (Date.now() - start) / 1000;
    if (ok && options.notification_audio && seconds >= (options.notification_min_seconds || 0)) beep();
    if (!ok) setForever(tab, false);  // a refused or failed job: do not repeat it
    if (s.forever && s.starts.length === 0) setTimeout(() => s.forever && button(tab, "generate")?.click(), 300);
  };
  const setOptions = (values) => {
    if (values && typeof values === "object") options = { ...options, ...values };
  };
  const running = (tab) => (state[tab] ? state[tab].starts.length : 0);

  // ---- Generate forever -------------------------------------------------------------------
  const setForever = (tab, on) => {
    const s = state[tab];
    if (!s) return;
    s.forever = on;
    button(tab, "generate")?.classList.toggle("generate-forever", on);
    if (on && s.starts.length === 0) button(tab, "generate")?.click();
  };
  let menu = null;
  const closeMenu = () => { if (menu) menu.remove(); menu = null; };
  const openMenu = (tab, x, y) => {
    closeMenu();
    menu = document.createElement("div");
    menu.id = "habits_menu";
    menu.setAttribute("role", "menu");
    const item = (text, on) => {
      const entry = document.createElement("button");
      entry.type = "button";
      entry.setAttribute("role", "menuitem");
      entry.textContent = text;
      entry.disabled = state[tab].forever === on;
      entry.addEventListener("click", () => { closeMenu(); setForever(tab, on); });
      menu.appendChild(entry);
    };
    item(labels.forever || "Generate forever", true);
    item(labels.cancel || "Cancel generate forever", false);
    menu.style.left = `${x}px`;
    menu.style.top = `${y}px`;
    document.body.appendChild(menu);
  };
  document.addEventListener("contextmenu", (e) => {
    const tab = tabs.find((t) => e.target.closest && e.target.closest(`#${t}_generate`));
    if (!tab) return;
    e.preventDefault();
    openMenu(tab, e.pageX, e.pageY);
  });
  document.addEventListener("click", (e) => {  // a click of the user's (not forever's own)
    if (menu && e.isTrusted && !menu.contains(e.target)) closeMenu();
  }, true);

  // ---- Ctrl+Up / Ctrl+Down: weights in the prompt ---------------------------------------
  // the range [start, end) the key acts on: the selection, else the <...> or (...) group
  // around the caret (up to its last colon), else the word at the caret
  const group = (text, caret, open, close) => {
    let depth = 0;
    let start = -1;
    for (let i = caret - 1; i >= 0; i--) {
      if (text[i] === close) depth++;
      else if (text[i] === open) { if (depth === 0) { start = i; break; } depth--; }
    }
    if (start < 0) return null;
    depth = 0;
    for (let i = caret; i < text.length; i++) {
      if (text[i] === open) depth++;
      else if (text[i] === close) {
        if (depth > 0) { depth--; continue; }
        const inner = text.slice(start + 1, i);
        const colon = inner.lastIndexOf(":");
        return [start + 1, colon < 0 ? i : start + 1 + colon];
      }
    }
    return null;
  };
  const word = (text, caret) => {
    let start = caret;
    let end = caret;
    while (start > 0 && !DELIMITERS.includes(text[start - 1])) start--;
    while (end < text.length && !DELIMITERS.includes(text[end])) end++;
    return [start, end];
  };
  const format = (weight) => {
    const rounded = parseFloat(weight.toPrecision(12));
    return Number.isInteger(rounded) ? rounded.toFixed(1) : String(rounded);
  };
  // the new text and selection, or null when there is nothing to weigh
  const reweigh = (text, start, end, up) => {
    if (start === end) {
      const found = group(text, start, "<", ">") || group(text, start, "(", ")") || word(text, start);
      [start, end] = found;
    }
    let close = ")";
    let step = options.keyedit_precision_attention;
    if (text[start - 1] === "<") {
      close = ">";
      step = options.keyedit_precision_extra;
    } else if (text[start - 1] !== "(") {
      while (end > start && text[end - 1] === " ") end--;
      if (start === end) return null;
      text = `${text.slice(0, start)}(${text.slice(start, end)}:1.0)${text.slice(end)}`;
      start += 1;
      end += 1;
    }
    const after = text.slice(end);
    const closing = after.indexOf(close);
    if (closing < 0) return null;
    const hasWeight = after[0] === ":";
    if (!hasWeight && after[0] !== close) return null;  // the selection ends inside a word
    const current = hasWeight ? parseFloat(after.slice(1, closing)) : 1.1;
    if (Number.isNaN(current)) return null;
    const weight = parseFloat((current + (up ? step : -step)).toPrecision(12));
    const rest = after.slice(closing);
    if (close === ")" && weight === 1) {  // (word:1.0) is the word
      return [`${text.slice(0, start - 1)}${text.slice(start, end)}${rest.slice(1)}`, start - 1, end - 1];
    }
    return [`${text.slice(0, end)}:${format(weight)}${rest}`, start, end];
  };
  const promptBox = (el) => el && el.tagName === "TEXTAREA"
    && tabs.some((t) => el.closest(`#${t}_prompt, #${t}_neg_prompt`));

  // ---- the keys ------------------------------------------------------------------------------
  document.addEventListener("keydown", (e) => {
    const ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && e.key === "Enter") {
      const tab = openTab();
      if (!tab) return;
      e.preventDefault();
      button(tab, "generate").click();
      return;
    }
    if (ctrl && (e.key === "ArrowUp" || e.key === "ArrowDown") && promptBox(e.target)) {
      const box = e.target;
      const out = reweigh(box.value, box.selectionStart, box.selectionEnd, e.key === "ArrowUp");
      e.preventDefault();
      if (!out) return;
      box.value = out[0];
      box.setSelectionRange(out[1], out[2]);
      box.dispatchEvent(new Event("input", { bubbles: true }));
      return;
    }
    if (e.key === "Escape" && !e.defaultPrevented) {
      if (menu) return closeMenu();
      const tab = openTab();
      const busy = e.target.closest && e.target.closest('[role="combobox"], [role="listbox"], .preview, dialog');
      if (!tab || busy || !running(tab)) return;
      e.preventDefault();
      button(tab, "interrupt").click();
    }
  });

  Object.assign(window.webuiHabits || (window.webuiHabits = {}), {
    started, ended, setOptions, setForever, reweigh, running, options: () => ({ ...options }),
  });
})();

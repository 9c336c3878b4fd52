// Translates the page from English with a JSON mapping (A1111-style localization).
// The server puts window.webuiLocalization = {choice, languages: {name: mapping}} before
// this script. choice "auto" follows the browser's languages. Text nodes, placeholders,
// titles and aria-labels are translated; a MutationObserver translates what Gradio adds
// later. Keys with "{}" are patterns ("Step {}/{}"); "Label (key)" keeps the "(key)".
// A dropdown shows its chosen value in an <input>: that shown text is translated too
// (the value sent to the server stays the English choice, so nothing else changes).
// Nothing inside pre, code, textarea, [translate=no] or .infotext is touched.
(() => {
  const config = window.webuiLocalization || {};
  const languages = config.languages || {};
  const pick = () => {
    if (config.choice && config.choice !== "auto") return config.choice;
    const wanted = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
    for (const lang of wanted) {
      const norm = String(lang).replace("-", "_");
      const exact = Object.keys(languages).find((k) => k.toLowerCase() === norm.toLowerCase());
      if (exact) return exact;
      const base = norm.split("_")[0].toLowerCase();
      if (base === "en") return "en";
      const family = Object.keys(languages).find((k) => k.split("_")[0].toLowerCase() === base);
      if (family) return family;
    }
    return "en";
  };
  const lang = pick();
  const mapping = languages[lang];
  if (!mapping) return;
  if (Object.keys(mapping).every((k) => mapping[k] === k)) return; // the source text already
  window.webuiLocalization.active = lang;
  document.documentElement.setAttribute("lang", lang.replace("_", "-"));
  const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const patterns = Object.keys(mapping)
    .filter((k) => k.includes("{}"))
    .map((k) => [new RegExp("^" + k.split("{}").map(escape).join("([\\s\\S]*?)") + "$"), mapping[k]]);
  const suffix = /^([\s\S]*\S) \(([A-Za-z0-9_]+)\)$/;
  const translate = (text) => {
    const key = text.trim();
    if (!key) return null;
    let found = Object.prototype.hasOwnProperty.call(mapping, key) ? mapping[key] : null;
    if (found === null) {
      for (const [re, target] of patterns) {
        const m = key.match(re);
        if (m) {
          let i = 1;
          found = target.replace(/\{\}/g, () => (m[i] !== undefined ? translatePart(m[i++]) : ""));
          break;
        }
      }
    }
    if (found === null) {
      const m = key.match(suffix);
      if (m && Object.prototype.hasOwnProperty.call(mapping, m[1])) found = `${mapping[m[1]]} (${m[2]})`;
    }
    if (found === null || found === key) return null;
    const start = text.indexOf(key);
    return text.slice(0, start) + found + text.slice(start + key.length);
  };
  const translatePart = (part) => {
    const key = part.trim();
    return Object.prototype.hasOwnProperty.call(mapping, key) ? part.replace(key, mapping[key]) : part;
  };
  const skip = (el) => el && el.closest && el.closest("pre, code, textarea, script, style, [translate=no], .infotext");
  const skipAttrs = (el) => el && el.closest && el.closest("pre, code, [translate=no], .infotext");
  const done = new WeakMap(); // text node -> the translation we wrote
  const textNode = (node) => {
    if (done.get(node) === node.nodeValue || skip(node.parentElement)) return;
    const out = translate(node.nodeValue);
    if (out !== null) {
      done.set(node, out);
      node.nodeValue = out;
    }
  };
  const ATTRS = ["placeholder", "title", "aria-label"];
  const written = new WeakMap(); // element -> {attribute: the translation we wrote}
  const element = (el) => {
    if (skipAttrs(el)) return;
    for (const attr of ATTRS) {
      const value = el.getAttribute(attr);
      const ours = written.get(el) || {};
      if (!value || ours[attr] === value) continue; // never translate our own translation
      const out = translate(value);
      if (out !== null) {
        written.set(el, { ...ours, [attr]: out });
        el.setAttribute(attr, out);
      }
    }
  };
  const native = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value");
  const exact = (v) => (typeof v === "string" && Object.prototype.hasOwnProperty.call(mapping, v) ? mapping[v] : v);
  const dropdown = (input) => {
    if (input.dataset.i18nValue) return;
    input.dataset.i18nValue = "1";
    Object.defineProperty(input, "value", {
      configurable: true,
      get() { return native.get.call(this); },
      set(v) { native.set.call(this, exact(v)); },
    });
    native.set.call(input, exact(native.get.call(input)));
  };
  const walk = (root) => {
    if (root.nodeType === Node.TEXT_NODE) return textNode(root);
    if (root.nodeType !== Node.ELEMENT_NODE) return;
    root.querySelectorAll('input[role="combobox"]').forEach(dropdown);
    if (root.matches('input[role="combobox"]')) dropdown(root);
    element(root);
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.nodeType === Node.TEXT_NODE) textNode(node);
      else element(node);
    }
  };
  const observer = new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "characterData") textNode(r.target);
      else if (r.type === "attributes") element(r.target);
      else r.addedNodes.forEach(walk);
    }
  });
  const start = () => {
    walk(document.body);
    observer.observe(document.body, { childList: true, subtree: true, characterData: true, attributes: true, attributeFilter: ATTRS });
    const title = translate(document.title);
    if (title !== null) document.title = title;
  };
  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();

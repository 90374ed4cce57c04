// @ts-check
// Markdown -> sanitised HTML, with highlight.js for fenced code.
// Everything here is bundled from pinned npm packages; nothing is fetched at run time.
//
// An answer is the model's text, and so is any HTML in it (or in an imported chat):
// it must not drive or imitate the app. Only the elements this module's renderer
// makes carry a per-page random mark the model cannot know; the sanitiser lets
// class, id, role, data-*, aria-* and style through on those alone, and drops form
// controls (a model's <button> keeps its text, nothing else). The app's own control
// in an answer, a code block's Copy button, is added to the DOM after sanitising.
import { Marked } from 'marked';
import DOMPurify from 'dompurify';
import { h } from './dom.js';
import hljs from 'highlight.js/lib/core';
import bash from 'highlight.js/lib/languages/bash';
import c from 'highlight.js/lib/languages/c';
import cpp from 'highlight.js/lib/languages/cpp';
import css from 'highlight.js/lib/languages/css';
import diff from 'highlight.js/lib/languages/diff';
import dockerfile from 'highlight.js/lib/languages/dockerfile';
import go from 'highlight.js/lib/languages/go';
import ini from 'highlight.js/lib/languages/ini';
import java from 'highlight.js/lib/languages/java';
import javascript from 'highlight.js/lib/languages/javascript';
import json from 'highlight.js/lib/languages/json';
import markdown from 'highlight.js/lib/languages/markdown';
import python from 'highlight.js/lib/languages/python';
import rust from 'highlight.js/lib/languages/rust';
import shell from 'highlight.js/lib/languages/shell';
import sql from 'highlight.js/lib/languages/sql';
import typescript from 'highlight.js/lib/languages/typescript';
import xml from 'highlight.js/lib/languages/xml';
import yaml from 'highlight.js/lib/languages/yaml';

const LANGS = { bash, c, cpp, css, diff, dockerfile, go, ini, java, javascript, json, markdown, python, rust, shell, sql, typescript, xml, yaml };
for (const [name, def] of Object.entries(LANGS)) hljs.registerLanguage(name, def);
hljs.registerAliases(['toml'], { languageName: 'ini' });
hljs.registerAliases(['sh', 'zsh', 'console'], { languageName: 'bash' });
hljs.registerAliases(['py', 'python3'], { languageName: 'python' });
hljs.registerAliases(['html', 'svg', 'xhtml'], { languageName: 'xml' });

const ESC = /** @type {Record<string, string>} */ ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' });
/** @param {unknown} s */
export const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (ch) => ESC[ch]);

// The mark of the renderer's own elements: random per page load, never stored or
// sent, and stripped by the sanitiser, so no answer can carry it.
const MARK = 'data-localai-app';
const NONCE = Array.from(crypto.getRandomValues(new Uint8Array(16)), (x) => x.toString(16).padStart(2, '0')).join('');
const OWN = `${MARK}="${NONCE}"`;

/** @param {string} code @param {string} lang */
function highlight(code, lang) {
  if (lang && hljs.getLanguage(lang)) {
    try {
      // highlight.js escapes the code: every <span class=" in its output is its own.
      return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value.replaceAll('<span class="', `<span ${OWN} class="`);
    } catch { /* fall back to plain */ }
  }
  return escapeHtml(code);
}

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    code({ text, lang }) {
      const language = (lang || '').trim().split(/\s+/)[0].toLowerCase();
      const label = language || 'text';
      return (
        `<div ${OWN} class="code-block"><div ${OWN} class="code-head"><span ${OWN} class="code-lang">${escapeHtml(label)}</span></div>` +
        `<pre><code ${OWN} class="hljs${language ? ` language-${escapeHtml(language)}` : ''}">${highlight(text, language)}</code></pre></div>`
      );
    },
    checkbox({ checked }) {
      return `<input ${OWN} ${checked ? 'checked="" ' : ''}disabled="" type="checkbox"> `;
    },
  },
});

// Form controls never come from an answer. <input> is the renderer's task-list box
// (marked) or nothing; the others lose their tag and keep their text.
const CONTROLS = ['button', 'select', 'option', 'optgroup', 'datalist', 'textarea', 'form', 'fieldset', 'legend', 'label', 'output', 'meter', 'progress'];
// The attributes an answer's own HTML may keep: content, never the app's hooks or looks.
const PLAIN_ATTRS = new Set(['href', 'src', 'alt', 'title', 'width', 'height', 'start', 'align', 'colspan', 'rowspan', 'lang', 'dir', 'cite', 'datetime', 'open']);
/** @type {WeakSet<Node>} elements the renderer made */
const own = new WeakSet();

DOMPurify.addHook('uponSanitizeElement', (node, data) => {
  if (node.nodeType !== 1) return;
  const elt = /** @type {Element} */ (node);
  if (elt.getAttribute(MARK) === NONCE) own.add(elt);
  else if (data.tagName === 'input') elt.remove();
});
DOMPurify.addHook('uponSanitizeAttribute', (node, data) => {
  if (data.attrName === MARK || !(own.has(node) || PLAIN_ATTRS.has(data.attrName))) data.keepAttr = false;
});
DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.hasAttribute('href')) {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});

// Set once: a config passed to sanitize() is parsed again on every call, and the
// streaming renderer sanitises every frame.
DOMPurify.setConfig({
  FORBID_TAGS: ['style', 'dialog', 'template', ...CONTROLS],
  FORBID_ATTR: ['style', 'autofocus'],
});

/** @param {string} html */
export function sanitize(html) {
  return DOMPurify.sanitize(html);
}

/** The app's Copy button on each code block under *root*. @param {ParentNode} root */
function addCopyButtons(root) {
  for (const head of root.querySelectorAll('.code-head')) {
    head.append(h('button', { type: 'button', class: 'code-copy', dataset: { act: 'copy-code' } }, 'Copy'));
  }
}

/** Show *text* as markdown in *el* (replacing what it held). @param {HTMLElement} el @param {string} text */
export function renderMarkdown(el, text) {
  el.innerHTML = sanitize(marked.parse(text || '', { async: false }));
  addCopyButtons(el);
}

// Incremental renderer for the message that is streaming. The text is split into
// top-level markdown blocks; blocks whose source did not change keep their DOM,
// only the changed tail is parsed, highlighted and sanitised again.
export class StreamRenderer {
  /** @param {HTMLElement} el */
  constructor(el) {
    this.el = el;
    /** @type {string[]} */
    this.raws = [];
    /** @type {HTMLElement[]} */
    this.nodes = [];
  }

  /** @param {string} text */
  update(text) {
    const tokens = marked.lexer(text || '');
    const n = tokens.length;
    let keep = 0;
    // The last block may still grow, so it is always rebuilt.
    while (keep < this.raws.length && keep < n - 1 && this.raws[keep] === tokens[keep].raw) keep++;
    for (let i = this.nodes.length - 1; i >= keep; i--) this.nodes[i].remove();
    this.nodes.length = keep;
    this.raws.length = keep;
    for (let i = keep; i < n; i++) {
      const t = tokens[i];
      const list = /** @type {import('marked').TokensList} */ (Object.assign([t], { links: tokens.links }));
      const div = document.createElement('div');
      div.className = 'md-blk';
      div.innerHTML = sanitize(marked.parser(list));
      addCopyButtons(div);
      this.el.append(div);
      this.nodes.push(div);
      this.raws.push(t.raw);
    }
  }
}

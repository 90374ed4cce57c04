// Markdown -> sanitised HTML, with highlight.js for fenced code.
// Everything here is bundled from pinned npm packages; nothing is fetched at run time.
import { Marked } from 'marked';
import DOMPurify from 'dompurify';
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

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (ch) => ESC[ch]);

function highlight(code, lang) {
  if (lang && hljs.getLanguage(lang)) {
    try {
      return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
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
        `<div class="code-block"><div class="code-head"><span class="code-lang">${escapeHtml(label)}</span>` +
        '<button type="button" class="code-copy" data-act="copy-code">Copy</button></div>' +
        `<pre><code class="hljs${language ? ` language-${escapeHtml(language)}` : ''}">${highlight(text, language)}</code></pre></div>`
      );
    },
  },
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
  FORBID_TAGS: ['style', 'form', 'textarea', 'select', 'option', 'dialog', 'template'],
  FORBID_ATTR: ['style', 'autofocus'],
  ADD_ATTR: ['target'],
});

export function sanitize(html) {
  return DOMPurify.sanitize(html);
}

export function renderMarkdown(text) {
  return sanitize(marked.parse(text || ''));
}

// Incremental renderer for the message that is streaming. The text is split into
// top-level markdown blocks; blocks whose source did not change keep their DOM,
// only the changed tail is parsed, highlighted and sanitised again.
export class StreamRenderer {
  constructor(el) {
    this.el = el;
    this.raws = [];
    this.nodes = [];
  }

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
      const list = [t];
      list.links = tokens.links;
      const div = document.createElement('div');
      div.className = 'md-blk';
      div.innerHTML = sanitize(marked.parser(list));
      this.el.append(div);
      this.nodes.push(div);
      this.raws.push(t.raw);
    }
  }

  finish(text) {
    this.el.innerHTML = renderMarkdown(text);
    this.raws = [];
    this.nodes = [];
  }
}

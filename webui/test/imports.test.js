// The module rules of src/ (webui/README.md), read from the import statements:
// the core stays DOM-free, views never import one another, the graph has no cycle,
// and only actions.js changes the state.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, posix, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = join(dirname(fileURLToPath(import.meta.url)), '..', 'src');

/** The view/ modules any view may import: shared helpers that import no view but elements.js. */
const VIEW_HELPERS = ['view/elements.js', 'view/toast.js', 'view/confirm.js'];

/** Every .js file under src/, as a path relative to it ('view/thread.js'). */
function sources(dir = SRC) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sources(path);
    return e.name.endsWith('.js') ? [relative(SRC, path).split('\\').join('/')] : [];
  });
}

/** The src/ modules *file* imports (static imports, `export ... from` too); packages and CSS left out. */
function importsOf(file) {
  const text = readFileSync(join(SRC, file), 'utf8');
  const specs = [...text.matchAll(/^\s*(?:import|export)\s+(?:[^'";]*?\sfrom\s+)?['"]([^'"]+)['"]/gm)].map((m) => m[1]);
  return specs
    .filter((s) => s.startsWith('.') && s.endsWith('.js'))
    .map((s) => posix.normalize(posix.join(posix.dirname(file), s)));
}

const graph = new Map(sources().map((f) => [f, importsOf(f)]));
const isView = (f) => f.startsWith('view/');

test('the import reader sees the imports (a guard against a regex that matches nothing)', () => {
  assert.ok(graph.get('main.js').includes('view/thread.js'));
  assert.ok(graph.get('view/thread.js').includes('state.js'));
  assert.ok(graph.get('view/thread.js').includes('view/elements.js'));
  for (const [file, deps] of graph) for (const d of deps) assert.ok(graph.has(d), `${file} imports ${d}, which is not in src/`);
});

test('a view imports no other view, only the shared helpers', () => {
  const bad = [];
  for (const [file, deps] of graph) {
    if (!isView(file)) continue;
    const allowed = VIEW_HELPERS.includes(file) ? ['view/elements.js'] : VIEW_HELPERS;
    for (const d of deps) if (isView(d) && !allowed.includes(d)) bad.push(`${file} -> ${d}`);
  }
  assert.deepEqual(bad, []);
});

test('the core imports only the core; state.js and actions.js import no view', () => {
  const bad = [];
  for (const [file, deps] of graph) {
    if (file.startsWith('core/')) for (const d of deps) if (!d.startsWith('core/')) bad.push(`${file} -> ${d}`);
    if (file === 'state.js' || file === 'actions.js') for (const d of deps) if (isView(d)) bad.push(`${file} -> ${d}`);
    for (const d of deps) if (d === 'main.js') bad.push(`${file} -> ${d}`);
  }
  assert.deepEqual(bad, []);
});

test('the import graph has no cycle', () => {
  /** @type {Map<string, 'visiting'|'done'>} */
  const mark = new Map();
  const visit = (file, path) => {
    if (mark.get(file) === 'done') return;
    if (mark.get(file) === 'visiting') assert.fail(`import cycle: ${[...path, file].join(' -> ')}`);
    mark.set(file, 'visiting');
    for (const d of graph.get(file) || []) visit(d, [...path, file]);
    mark.set(file, 'done');
  };
  for (const file of graph.keys()) visit(file, []);
});

test('only actions.js changes the state: no view updates the store or writes the storage', () => {
  const writes = /\bstore\.update\(|\bsettings\.set\(|\bchats\.(?:save|remove|importData|reload)\(/;
  const bad = [];
  for (const file of graph.keys()) {
    if (file === 'actions.js' || file === 'state.js' || file.startsWith('core/')) continue;
    readFileSync(join(SRC, file), 'utf8').split('\n').forEach((line, i) => {
      if (writes.test(line)) bad.push(`${file}:${i + 1}: ${line.trim()}`);
    });
  }
  assert.deepEqual(bad, []);
});

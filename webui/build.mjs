// Reproducible build of the WebUI: `npm ci && npm run build`.
// Bundles src/ with esbuild into dist/ (hashed asset names, no inline script or
// style so the gateway's strict CSP holds) and writes a .gz next to every file.
import * as esbuild from 'esbuild';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, rmSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join, relative, dirname } from 'node:path';
import { gzipSync, constants } from 'node:zlib';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, 'src');
// WEBUI_OUT: build elsewhere (the tests rebuild into a temp dir and compare with dist/).
const dist = process.env.WEBUI_OUT || join(here, 'dist');
const assets = join(dist, 'assets');

rmSync(dist, { recursive: true, force: true });
mkdirSync(assets, { recursive: true });

const result = await esbuild.build({
  entryPoints: { app: join(src, 'main.js') },
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2020', 'chrome90', 'firefox90', 'safari15'],
  outdir: assets,
  entryNames: '[name]-[hash]',
  assetNames: '[name]-[hash]',
  legalComments: 'eof',
  charset: 'utf8',
  metafile: true,
  logLevel: 'warning',
});

const outputs = Object.keys(result.metafile.outputs).map((p) => p.split('/').pop());
const js = outputs.find((n) => n.endsWith('.js'));
const css = outputs.find((n) => n.endsWith('.css'));
if (!js || !css) throw new Error(`unexpected esbuild outputs: ${outputs}`);

// Static files copied with a content hash in their name.
function copyHashed(name) {
  const data = readFileSync(join(src, name));
  const hash = createHash('sha256').update(data).digest('hex').slice(0, 8).toUpperCase();
  const dot = name.lastIndexOf('.');
  const out = `${name.slice(0, dot)}-${hash}${name.slice(dot)}`;
  writeFileSync(join(assets, out), data);
  return out;
}
const favicon = copyHashed('favicon.svg');

let html = readFileSync(join(src, 'index.html'), 'utf8');
html = html
  .replaceAll('%APP_JS%', `assets/${js}`)
  .replaceAll('%APP_CSS%', `assets/${css}`)
  .replaceAll('%FAVICON%', `assets/${favicon}`);
if (/<script(?![^>]*\bsrc=)[^>]*>/i.test(html) || /\sstyle=|<style/i.test(html) || /\son[a-z]+=/i.test(html)) {
  throw new Error('index.html must not contain inline script, style or event handler attributes (CSP)');
}
writeFileSync(join(dist, 'index.html'), html);

// Pre-compressed copies, deterministic (no mtime/name in the gzip header).
function walk(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}
let raw = 0;
let gz = 0;
for (const file of walk(dist).sort()) {
  const data = readFileSync(file);
  const z = gzipSync(data, { level: constants.Z_BEST_COMPRESSION });
  writeFileSync(`${file}.gz`, z);
  raw += data.length;
  gz += z.length;
  console.log(`${relative(dist, file).padEnd(40)} ${String(data.length).padStart(8)} B  ${String(z.length).padStart(7)} B gz`);
}
console.log(`${'total'.padEnd(40)} ${String(raw).padStart(8)} B  ${String(gz).padStart(7)} B gz`);

// esbuild bundles the stylesheet imported by main.js.
declare module '*.css';

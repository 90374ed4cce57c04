// @ts-check
// The page's fixed elements (index.html), looked up once, typed.

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @param {new () => T} type
 * @returns {T}
 */
function byId(id, type) {
  const e = document.getElementById(id);
  if (!(e instanceof type)) throw new Error(`index.html has no <${type.name}> #${id}`);
  return e;
}

const H = HTMLElement;
const Btn = HTMLButtonElement;
const Dialog = HTMLDialogElement;
const Form = HTMLFormElement;
const Input = HTMLInputElement;
const Area = HTMLTextAreaElement;

export const el = {
  app: byId('app', H),
  sidebar: byId('sidebar', H),
  sbClose: byId('sb-close', Btn),
  sbOpen: byId('sb-open', Btn),
  newChat: byId('new-chat', Btn),
  newChatTop: byId('new-chat-top', Btn),
  search: byId('search', Input),
  convList: byId('conv-list', H),
  importBtn: byId('import-btn', Btn),
  exportBtn: byId('export-btn', Btn),
  settingsBtn: byId('settings-btn', Btn),
  usageBtn: byId('usage-btn', Btn),
  importFile: byId('import-file', Input),
  backdrop: byId('backdrop', H),
  modelPicker: byId('model-picker', H),
  modelBtn: byId('model-btn', Btn),
  modelDot: byId('model-dot', H),
  modelName: byId('model-name', H),
  modelState: byId('model-state', H),
  modelMenu: byId('model-menu', H),
  conn: byId('conn', H),
  connLabel: byId('conn-label', H),
  chatSettingsBtn: byId('chat-settings-btn', Btn),
  themeBtn: byId('theme-btn', Btn),
  helpBtn: byId('help-btn', Btn),
  banner: byId('banner', H),
  bannerText: byId('banner-text', H),
  bannerRetry: byId('banner-retry', Btn),
  scroller: byId('scroller', H),
  systemPill: byId('system-pill', H),
  thread: byId('thread', H),
  empty: byId('empty', H),
  emptySub: byId('empty-sub', H),
  jump: byId('jump', Btn),
  ctxWarn: byId('ctx-warn', H),
  composer: byId('composer', Form),
  input: byId('input', Area),
  send: byId('send', Btn),
  stop: byId('stop', Btn),
  meter: byId('meter', H),
  meterFill: byId('meter-fill', H),
  meterText: byId('meter-text', H),
  keyDialog: byId('key-dialog', Dialog),
  keyForm: byId('key-form', Form),
  keyError: byId('key-error', H),
  keyInput: byId('key-input', Input),
  keyClear: byId('key-clear', Btn),
  keyCancel: byId('key-cancel', Btn),
  chatDialog: byId('chat-dialog', Dialog),
  chatForm: byId('chat-form', Form),
  sysInput: byId('sys-input', Area),
  tempInput: byId('temp-input', Input),
  maxtokInput: byId('maxtok-input', Input),
  chatCancel: byId('chat-cancel', Btn),
  confirmDialog: byId('confirm-dialog', Dialog),
  confirmText: byId('confirm-text', H),
  confirmTitle: byId('confirm-title', H),
  confirmOk: byId('confirm-ok', Btn),
  helpDialog: byId('help-dialog', Dialog),
  usageDialog: byId('usage-dialog', Dialog),
  usageWho: byId('usage-who', H),
  usageStatus: byId('usage-status', H),
  usageBody: byId('usage-body', H),
  usageRefresh: byId('usage-refresh', Btn),
  batchSec: byId('batch-sec', H),
  batchStatus: byId('batch-status', H),
  batchBody: byId('batch-body', H),
  toasts: byId('toasts', H),
};

// @ts-check
// A small observable store: the page's state changes only through named updates,
// and the views re-render from their subscriptions. No DOM: unit-tested under Node.

/**
 * @template {object} S
 * @typedef {(state: Readonly<S>, update: {action: string, keys: (keyof S)[]}) => void} Listener
 */

/** @template {object} S */
export class Store {
  /** @param {S} initial */
  constructor(initial) {
    /** @type {S} */
    this.current = { ...initial };
    /** @type {{keys: Set<keyof S>, listener: Listener<S>}[]} */
    this.subscriptions = [];
  }

  /** The state now (read it; change it with update()). @returns {Readonly<S>} */
  get state() {
    return this.current;
  }

  /**
   * Apply *patch* under the name of the *action* doing it, then call, in the order
   * they subscribed, each listener to one of the patch's keys. A key in the patch
   * counts as changed even when its value is the same object: a conversation is
   * edited in place, and its subscribers still need to hear of it.
   * @param {string} action
   * @param {Partial<S>} patch
   */
  update(action, patch) {
    Object.assign(this.current, patch);
    const keys = /** @type {(keyof S)[]} */ (Object.keys(patch));
    // A listener that subscribes or unsubscribes while we notify takes effect next update.
    for (const sub of [...this.subscriptions]) {
      if (keys.some((k) => sub.keys.has(k))) sub.listener(this.current, { action, keys });
    }
  }

  /**
   * Call *listener* after each update that touches one of *keys*.
   * @param {(keyof S)[]} keys
   * @param {Listener<S>} listener
   * @returns {() => void}  unsubscribes
   */
  subscribe(keys, listener) {
    const sub = { keys: new Set(keys), listener };
    this.subscriptions.push(sub);
    return () => {
      this.subscriptions = this.subscriptions.filter((s) => s !== sub);
    };
  }
}

// The stand-in for the widget model in a snapshot: the little of anywidget's model the front
// end uses (get, set, on, off, save_changes, send), with no kernel behind it.

export class StandInModel {
  /**
   * @param {object} state the synced traits, by name
   * @param {(msg: object) => Promise<[object, DataView[]]>} respond the reply to a request
   * @param {(err: Error) => void} onError called when a reply cannot be made
   */
  constructor(state, respond, onError) {
    this._state = state;
    this._respond = respond;
    this._onError = onError;
    this._handlers = new Map();
  }

  get(name) {
    return this._state[name];
  }

  /** Emits "change:<name>" (model, value) and then "change" (model), unless the value is the same. */
  set(name, value) {
    if (Object.is(this._state[name], value)) return;
    this._state[name] = value;
    this._emit("change:" + name, this, value);
    this._emit("change", this);
  }

  save_changes() {}

  /** `names`: one event name or several separated by spaces. */
  on(names, callback) {
    for (const name of names.split(/\s+/)) {
      if (!this._handlers.has(name)) this._handlers.set(name, new Set());
      this._handlers.get(name).add(callback);
    }
  }

  /** Without a callback, every handler of those events; without names, every handler. */
  off(names, callback) {
    if (!names) {
      this._handlers.clear();
      return;
    }
    for (const name of names.split(/\s+/)) {
      if (callback) this._handlers.get(name)?.delete(callback);
      else this._handlers.delete(name);
    }
  }

  /** A request to the kernel: its recorded reply comes back as a "msg:custom" event. */
  send(msg) {
    this._respond(msg).then(([content, buffers]) => this._emit("msg:custom", content, buffers), this._onError);
  }

  /** A handler that throws is reported and does not stop the others. */
  _emit(name, ...args) {
    for (const callback of [...(this._handlers.get(name) ?? [])]) {
      try {
        callback(...args);
      } catch (err) {
        console.error(err);
      }
    }
  }
}

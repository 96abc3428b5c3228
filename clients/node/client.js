'use strict';
/**
 * Node.js client of the Espalier API (Plan, Expand).
 *
 * Owns loading the proto at run time (no generated code to keep in step: the one contract is
 * protos/espalier/v1/espalier.proto), the channel, per-call deadlines, the shared bearer token, and
 * turning grpc-js errors into EspalierError, which names the status code (INVALID_ARGUMENT, ...)
 * and carries the server's `espalier-field` and `retry-after-ms` trailers.
 *
 * Messages are plain objects in proto-loader's shape: camelCase field names, enums as their
 * names ('ROUTE_PARALLEL'), and for a oneof a string field naming the case that is set
 * (an AnswerEvent `e` has `e.event === 'nodeDelta'` and `e.nodeDelta`).
 *
 * The caller's conversation: plan, expand and answer take `system` (standing instructions: a
 * persona, the language, house style) and `history` (the turns before the question), sent as the
 * request's `messages` (see ChatMessage in the proto for how the server uses them).
 */
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILE = 'espalier/v1/espalier.proto';
const DEFAULT_DEADLINE_MS = 300_000; // a long answer on a CPU takes minutes; never wait forever
const MODES = { auto: 'MODE_AUTO', direct: 'MODE_DIRECT', sot: 'MODE_SOT', sgd: 'MODE_SGD' };
// grpc.status maps names to numbers; errors are reported by name, as the server's docs are written.
const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

const LOAD_OPTIONS = {
  keepCase: false, // camelCase, as JavaScript code expects
  enums: String, // names, not numbers: readable and stable across additive enum changes
  longs: Number, // every integer in the API fits a double
  defaults: true, // unset scalars read as their zero value, as in every other proto binding
  oneofs: true, // a virtual field names the oneof case that is set
};

const loaded = new Map(); // proto path -> service constructor; parsing the proto is not free

function serviceConstructor(protoPath) {
  if (!loaded.has(protoPath)) {
    const includeDirs = protoPath === PROTO_FILE ? [PROTO_ROOT] : [];
    const definition = protoLoader.loadSync(protoPath, { ...LOAD_OPTIONS, includeDirs });
    loaded.set(protoPath, grpc.loadPackageDefinition(definition).espalier.v1.EspalierService);
  }
  return loaded.get(protoPath);
}

/** A failed call: `codeName` is the gRPC status name, `field` the offending request field, if named. */
class EspalierError extends Error {
  constructor(serviceError) {
    const codeName = STATUS_NAMES[serviceError.code] ?? `CODE_${serviceError.code}`;
    super(`${codeName}: ${serviceError.details}`);
    this.name = 'EspalierError';
    this.code = serviceError.code;
    this.codeName = codeName;
    this.details = serviceError.details;
    this.metadata = serviceError.metadata; // the trailers
    this.field = firstValue(serviceError.metadata, 'espalier-field');
    const retry = firstValue(serviceError.metadata, 'retry-after-ms');
    this.retryAfterMs = retry === undefined ? undefined : Number(retry);
    this.cause = serviceError;
  }
}

function firstValue(metadata, key) {
  const values = metadata ? metadata.get(key) : [];
  return values.length ? String(values[0]) : undefined;
}

function asEspalierError(err) {
  // Only errors that carry a status code are gRPC's; anything else is a bug to surface unchanged.
  return err && typeof err.code === 'number' && 'details' in err ? new EspalierError(err) : err;
}

/** Settings with only the given keys, so the rest take the server's defaults (proto3 `optional`). */
function generationSettings(settings = {}) {
  return Object.fromEntries(Object.entries(settings).filter(([, value]) => value !== undefined));
}

/**
 * The question part of a Plan, Expand or Answer request: `{ question }` alone when there is neither
 * system text nor history (the request as it always was), else `{ messages }`: the system message
 * (when `system` is not empty), the history as given, then the question as the last user message.
 * Roles and sizes are the server's to check (it names the offending `messages[i]`).
 */
function questionFields(question, { system, history } = {}) {
  if (system !== undefined && typeof system !== 'string') {
    throw new TypeError(`system must be a string; got ${typeof system}`);
  }
  if (history !== undefined && !Array.isArray(history)) {
    throw new TypeError('history must be an array of { role, content } messages, oldest first');
  }
  const turns = chatMessages(history);
  if (!system && turns.length === 0) return { question };
  const instructions = system ? [{ role: 'system', content: system }] : [];
  return { messages: [...instructions, ...turns, { role: 'user', content: question }] };
}

/** `{ role, content }` objects as ChatMessages (any other key is dropped). */
function chatMessages(history = []) {
  return history.map((message, i) => {
    if (message === null || typeof message !== 'object') {
      throw new TypeError(`history[${i}] must be a { role, content } object; got ${message}`);
    }
    return { role: message.role, content: message.content };
  });
}

function modeName(mode = 'auto') {
  const name = MODES[mode] ?? (Object.values(MODES).includes(mode) ? mode : undefined);
  if (name === undefined) {
    throw new TypeError(`mode must be one of ${Object.keys(MODES).join(', ')}; got ${mode}`);
  }
  return name;
}

class EspalierClient {
  /**
   * @param {string} target host:port
   * @param {object} [options]
   * @param {string} [options.token] shared token, sent as `authorization: Bearer <token>`
   * @param {number} [options.deadlineMs] default deadline of each call (300 s)
   * @param {string} [options.protoPath] espalier.proto elsewhere than this repository's protos/
   */
  constructor(target, { token, deadlineMs = DEFAULT_DEADLINE_MS, protoPath = PROTO_FILE } = {}) {
    if (token !== undefined && (!token || /\s/.test(token))) {
      throw new TypeError('token must be a non-empty string without spaces');
    }
    const Service = serviceConstructor(protoPath);
    // Plaintext, as the server listens on 127.0.0.1 by default; the token rides in metadata.
    this._stub = new Service(target, grpc.credentials.createInsecure());
    this._token = token;
    this._deadlineMs = deadlineMs;
  }

  _call(deadlineMs = this._deadlineMs) {
    const metadata = new grpc.Metadata();
    if (this._token) metadata.set('authorization', `Bearer ${this._token}`);
    return { metadata, options: { deadline: Date.now() + deadlineMs } };
  }

  /** Resolves once the channel is connected; rejects after timeoutMs (the server may still be starting). */
  ready(timeoutMs = 10_000) {
    return new Promise((resolve, reject) => {
      this._stub.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve()));
    });
  }

  /**
   * Route the question and write its skeleton graph.
   * @param {string} question
   * @param {object} [options]
   * @param {string} [options.mode] 'auto' (default), 'direct', 'sot' or 'sgd'
   * @param {object} [options.settings] generation settings (camelCase); unset ones take the server's defaults
   * @param {string} [options.system] the caller's standing instructions (a persona, the language,
   *   house style): they shape every prompt that writes the answer, not the route
   * @param {Array<{role: string, content: string}>} [options.history] the conversation before the
   *   question, oldest first, each role 'user' or 'assistant'. With `system` or `history` the
   *   request carries `messages` (system, history, then the question) instead of `question`.
   * @param {number} [options.deadlineMs] this call's deadline (the client's by default)
   * @returns {Promise<object>} a PlanResponse: { graph: { nodes, route }, reason, skeleton, timings }
   */
  plan(question, { mode = 'auto', settings, system, history, deadlineMs } = {}) {
    const request = {
      ...questionFields(question, { system, history }),
      mode: modeName(mode),
      settings: generationSettings(settings),
    };
    const { metadata, options } = this._call(deadlineMs);
    return new Promise((resolve, reject) => {
      this._stub.plan(request, metadata, options, (err, response) => {
        if (err) reject(asEspalierError(err));
        else resolve(response);
      });
    });
  }

  /**
   * Expand a graph (from plan(), possibly edited), yielding AnswerEvents as they arrive. Leaving
   * the loop early (break, return, a throw) cancels the call, so the server frees its slots.
   * @param {object} request
   * @param {string} request.question the question the graph was planned for
   * @param {object} request.graph the graph to expand: { route, nodes }
   * @param {object} [request.settings] generation settings
   * @param {string} [request.system] the caller's standing instructions, as in plan() (pass the
   *   same system and history as to plan(), so the points are written in the same conversation)
   * @param {Array<{role: string, content: string}>} [request.history] the conversation before the
   *   question, oldest first, as in plan()
   * @param {object} [options]
   * @param {number} [options.deadlineMs] this call's deadline
   */
  async *expand({ question, graph, settings, system, history }, { deadlineMs } = {}) {
    const request = {
      ...questionFields(question, { system, history }), graph, settings: generationSettings(settings),
    };
    const { metadata, options } = this._call(deadlineMs);
    yield* this._events(this._stub.expand(request, metadata, options));
  }

  /**
   * Plan and expand in one call, for callers that do not edit the graph: nodePlanned events as the
   * skeleton is written (the outline growing), then planReady and the points' events, as expand().
   * @param {string} question
   * @param {object} [options] mode, settings, system, history and deadlineMs, as in plan()
   */
  async *answer(question, { mode = 'auto', settings, system, history, deadlineMs } = {}) {
    const request = {
      ...questionFields(question, { system, history }),
      mode: modeName(mode),
      settings: generationSettings(settings),
    };
    const { metadata, options } = this._call(deadlineMs);
    yield* this._events(this._stub.answer(request, metadata, options));
  }

  async *_events(call) {
    try {
      for await (const response of call) yield response.event;
    } catch (err) {
      throw asEspalierError(err);
    } finally {
      // Cancelling ends the call with CANCELLED, which grpc-js emits as an 'error' event; the
      // caller chose to stop, so that one is expected and must not become an uncaught exception.
      call.on('error', () => {});
      call.cancel(); // a no-op once the call has ended
    }
  }

  close() {
    this._stub.close();
  }
}

/** `const client = connect('localhost:50051', { token })` */
function connect(target, options) {
  return new EspalierClient(target, options);
}

module.exports = { connect, EspalierClient, EspalierError, MODES };

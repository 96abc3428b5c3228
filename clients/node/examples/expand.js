#!/usr/bin/env node
'use strict';
/**
 * Ask Espalier a question in one Answer call, printing the outline as the skeleton is written, then
 * each point's text as it is decoded, one point after another in answer order, and a final summary
 * line. (Plan, then Expand, is the way for a caller that edits the graph in between.)
 *
 *   node examples/expand.js --target localhost:50051 "How can I improve my time management skills?"
 *   node examples/expand.js --target localhost:50051 --system "Answer in French." \
 *     --history chat.json "And in the evening?"
 *
 * --system is the caller's standing instructions (a persona, the language, house style); --history
 * names a JSON file holding the conversation before the question: an array of { "role", "content" }
 * objects, role "user" or "assistant", oldest first.
 *
 * Exit status: 0 on an answer, 2 for bad arguments, 1 for a failed call (its status code name is
 * printed, e.g. "error: INVALID_ARGUMENT: ...").
 */
const fs = require('node:fs');
const { parseArgs } = require('node:util');
const { connect, MODES } = require('../client');
const { GroupedPrinter } = require('../grouped-printer');

const USAGE = `usage: expand.js --target HOST:PORT [--mode ${Object.keys(MODES).join('|')}] [--token TOKEN]
                 [--point-tokens N] [--max-points N] [--deadline-s S]
                 [--system TEXT] [--history FILE.json] QUESTION`;

function parse(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      target: { type: 'string' },
      mode: { type: 'string', default: 'auto' },
      // The environment is the better place for a secret: flags show in `ps`.
      token: { type: 'string', default: process.env.ESPALIER_TOKEN },
      'point-tokens': { type: 'string' },
      'max-points': { type: 'string' },
      'deadline-s': { type: 'string', default: '300' },
      system: { type: 'string' },
      history: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return { help: true };
  if (!values.target || positionals.length === 0) throw new Error('--target and a question are required');
  if (!(values.mode in MODES)) throw new Error(`--mode must be one of ${Object.keys(MODES).join(', ')}`);
  return {
    target: values.target,
    mode: values.mode,
    token: values.token || undefined,
    question: positionals.join(' '),
    deadlineMs: positiveNumber('--deadline-s', values['deadline-s']) * 1000,
    system: values.system || undefined,
    history: values.history === undefined ? undefined : readHistory(values.history),
    settings: {
      pointMaxTokens: optionalCount('--point-tokens', values['point-tokens']),
      maxPoints: optionalCount('--max-points', values['max-points']),
    },
  };
}

/** The --history file: a JSON array of { role, content } objects (the server checks the roles). */
function readHistory(file) {
  let history;
  try {
    history = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`--history: cannot read ${file} as JSON: ${err.message}`);
  }
  const isMessage = (m) => m !== null && typeof m === 'object' && typeof m.role === 'string'
    && typeof m.content === 'string';
  if (!Array.isArray(history) || !history.every(isMessage)) {
    throw new Error(`--history: ${file} must hold a JSON array of { "role", "content" } objects`);
  }
  return history;
}

function positiveNumber(flag, text) {
  const value = Number(text);
  if (!(value > 0)) throw new Error(`${flag} must be a positive number; got ${text}`);
  return value;
}

function optionalCount(flag, text) {
  if (text === undefined) return undefined;
  const value = positiveNumber(flag, text);
  if (!Number.isInteger(value)) throw new Error(`${flag} must be a whole number; got ${text}`);
  return value;
}

async function main(argv) {
  let args;
  try {
    args = parse(argv);
  } catch (err) {
    process.stderr.write(`${err.message}\n${USAGE}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const client = connect(args.target, { token: args.token, deadlineMs: args.deadlineMs });
  try {
    const printer = new GroupedPrinter(process.stdout);
    const { mode, settings, system, history } = args;
    for await (const event of client.answer(args.question, { mode, settings, system, history })) {
      printer.onEvent(event);
    }
    return 0;
  } catch (err) {
    process.stderr.write(`error: ${err.message}\n`);
    return 1;
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});

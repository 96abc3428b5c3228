'use strict';
// What the client sends for `system` and `history`: a fake Espalier server in this process (the real
// proto, no model) records each request as it arrives on the wire. Runs everywhere.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFile } = require('node:child_process');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { connect } = require('../client');

const QUESTION = 'And in the evening?';
const SYSTEM = 'Always answer in French.';
const HISTORY = [
  { role: 'user', content: 'How do I sleep better?' },
  { role: 'assistant', content: 'Keep a regular bedtime.' },
];
const CONVERSATION = [{ role: 'system', content: SYSTEM }, ...HISTORY, { role: 'user', content: QUESTION }];
const GRAPH = { route: 'ROUTE_PARALLEL', nodes: [{ id: 1, title: 'Light' }, { id: 2, title: 'Screens' }] };
const DONE = { event: { answerDone: { route: 'ROUTE_DIRECT', text: 'ok' } } };

/** A fake server answering every call at once; `requests` holds [method, request] as received. */
async function fakeServer() {
  const definition = protoLoader.loadSync('espalier/v1/espalier.proto', {
    keepCase: false, enums: String, longs: Number, defaults: true, oneofs: true,
    includeDirs: [path.resolve(__dirname, '..', '..', '..', 'protos')],
  });
  const Service = grpc.loadPackageDefinition(definition).espalier.v1.EspalierService;
  const requests = [];
  const events = (method) => (call) => {
    requests.push([method, call.request]);
    call.write(DONE);
    call.end();
  };
  const server = new grpc.Server();
  server.addService(Service.service, {
    plan: (call, callback) => {
      requests.push(['plan', call.request]);
      callback(null, { graph: { route: 'ROUTE_DIRECT', nodes: [{ id: 1, title: 'q' }] }, reason: 'fake' });
    },
    expand: events('expand'),
    answer: events('answer'),
  });
  const port = await new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, bound) =>
      (err ? reject(err) : resolve(bound)));
  });
  const client = connect(`127.0.0.1:${port}`, { deadlineMs: 10_000 });
  return {
    client,
    requests,
    target: `127.0.0.1:${port}`,
    close: () => {
      client.close();
      server.forceShutdown();
    },
  };
}

async function drain(events) {
  const seen = [];
  for await (const event of events) seen.push(event.event);
  return seen;
}

test('without system or history the question goes as `question`, as before', async () => {
  const fake = await fakeServer();
  try {
    await fake.client.plan(QUESTION, { mode: 'direct' });
    await drain(fake.client.answer(QUESTION, { system: '', history: [] })); // empty is the same as unset
    assert.deepEqual(await drain(fake.client.expand({ question: QUESTION, graph: GRAPH })), ['answerDone']);
    assert.deepEqual(fake.requests.map(([method]) => method), ['plan', 'answer', 'expand']);
    for (const [method, request] of fake.requests) {
      assert.equal(request.question, QUESTION, method);
      assert.deepEqual(request.messages, [], method);
    }
  } finally {
    fake.close();
  }
});

test('plan, answer and expand send system, history, then the question as `messages`', async () => {
  const fake = await fakeServer();
  try {
    const plan = await fake.client.plan(QUESTION, { mode: 'sot', system: SYSTEM, history: HISTORY });
    assert.equal(plan.reason, 'fake');
    await drain(fake.client.answer(QUESTION, { mode: 'direct', system: SYSTEM, history: HISTORY }));
    await drain(fake.client.expand({ question: QUESTION, graph: GRAPH, system: SYSTEM, history: HISTORY }));
    assert.deepEqual(fake.requests.map(([method]) => method), ['plan', 'answer', 'expand']);
    for (const [method, request] of fake.requests) {
      assert.equal(request.question, '', `${method}: either question or messages, not both`);
      assert.deepEqual(request.messages, CONVERSATION, method);
    }
    const [[, planRequest], [, answerRequest], [, expandRequest]] = fake.requests;
    assert.equal(planRequest.mode, 'MODE_SOT');
    assert.equal(answerRequest.mode, 'MODE_DIRECT');
    assert.deepEqual(expandRequest.graph.nodes.map((n) => n.title), ['Light', 'Screens']);
  } finally {
    fake.close();
  }
});

test('system alone, or history alone, still sends `messages`', async () => {
  const fake = await fakeServer();
  try {
    await fake.client.plan(QUESTION, { system: SYSTEM });
    await fake.client.plan(QUESTION, { history: HISTORY });
    await fake.client.plan(QUESTION, { system: '', history: HISTORY });
    const [systemOnly, historyOnly, emptySystem] = fake.requests.map(([, request]) => request.messages);
    assert.deepEqual(systemOnly, [{ role: 'system', content: SYSTEM }, { role: 'user', content: QUESTION }]);
    assert.deepEqual(historyOnly, [...HISTORY, { role: 'user', content: QUESTION }]);
    assert.deepEqual(emptySystem, historyOnly, 'an empty system text adds no system message');
  } finally {
    fake.close();
  }
});

test('history is sent as given: roles are the server\'s to check, other keys are dropped', async () => {
  const fake = await fakeServer();
  try {
    await fake.client.plan(QUESTION, { history: [{ role: 'robot', content: 'beep', at: 3 }] });
    assert.deepEqual(fake.requests[0][1].messages,
      [{ role: 'robot', content: 'beep' }, { role: 'user', content: QUESTION }]);
  } finally {
    fake.close();
  }
});

test('a system that is not a string, or a history that is not an array of objects, is refused before any call',
  async () => {
    const client = connect('127.0.0.1:1');
    try {
      assert.throws(() => client.plan(QUESTION, { system: ['x'] }), /system must be a string/);
      assert.throws(() => client.plan(QUESTION, { history: HISTORY[0] }), /history must be an array/);
      assert.throws(() => client.plan(QUESTION, { history: ['hi'] }), /history\[0\] must be a \{ role, content \}/);
      await assert.rejects(drain(client.answer(QUESTION, { history: 'hi' })), TypeError);
      await assert.rejects(drain(client.expand({ question: QUESTION, graph: GRAPH, system: 1 })), TypeError);
    } finally {
      client.close();
    }
  });

/** Runs examples/expand.js; resolves { code, stdout, stderr } (a non-zero exit is not an error here). */
function runExample(args) {
  const script = path.join(__dirname, '..', 'examples', 'expand.js');
  return new Promise((resolve) => {
    execFile(process.execPath, [script, ...args], { timeout: 30_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? err.code : 0, stdout, stderr }));
  });
}

test('the example passes --system and --history through to the Answer request', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'espalier-node-'));
  const fake = await fakeServer();
  try {
    const historyFile = path.join(dir, 'chat.json');
    fs.writeFileSync(historyFile, JSON.stringify(HISTORY));
    const run = await runExample(['--target', fake.target, '--mode', 'direct', '--system', SYSTEM,
      '--history', historyFile, QUESTION]);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(fake.requests.map(([method]) => method), ['answer']);
    assert.deepEqual(fake.requests[0][1].messages, CONVERSATION);
    assert.equal(fake.requests[0][1].mode, 'MODE_DIRECT');

    fs.writeFileSync(historyFile, JSON.stringify({ role: 'user', content: 'not an array' }));
    const bad = await runExample(['--target', fake.target, '--history', historyFile, QUESTION]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--history: .* must hold a JSON array of \{ "role", "content" \} objects/);
    assert.equal(fake.requests.length, 1, 'bad arguments make no call');
  } finally {
    fake.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

'use strict';
// The client without a server: argument checks and how a failed call surfaces. Runs everywhere.
const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { connect, EspalierError } = require('../client');

/** A port nothing listens on: bound once by us, then released. */
async function closedPort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

test('an unknown mode and a token with spaces are refused before any call', () => {
  assert.throws(() => connect('127.0.0.1:1', { token: 'two words' }), TypeError);
  const client = connect('127.0.0.1:1');
  try {
    assert.throws(() => client.plan('q', { mode: 'fast' }), /mode must be one of auto, direct, sot, sgd/);
  } finally {
    client.close();
  }
});

test('no server: plan and expand fail with EspalierError naming UNAVAILABLE', async () => {
  const client = connect(`127.0.0.1:${await closedPort()}`, { deadlineMs: 5_000 });
  try {
    await assert.rejects(client.plan('q'), (err) => {
      assert.ok(err instanceof EspalierError);
      assert.equal(err.codeName, 'UNAVAILABLE');
      assert.match(err.message, /^UNAVAILABLE: /);
      return true;
    });
    await assert.rejects(async () => {
      for await (const event of client.expand({ question: 'q', graph: { nodes: [] } })) assert.fail(event);
    }, (err) => err instanceof EspalierError && err.codeName === 'UNAVAILABLE');
  } finally {
    client.close();
  }
});

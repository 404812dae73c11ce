// Starts a PLC directory and the reference PDS on free 127.0.0.1 ports, with every file in a
// temporary folder, and prints one JSON line once both accept requests:
//   {"plcUrl":"http://127.0.0.1:P","pdsUrl":"http://127.0.0.1:Q","firehoseUrl":"ws://127.0.0.1:Q",
//    "adminPassword":"…","dataDirectory":"…"}
// SIGTERM or SIGINT stops both servers, removes the folder and exits 0.
//
// Usage: node run-pds.mjs   (Node 22 or later; set LOG_ENABLED=true for the servers' logs on stdout)

import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const LOOPBACK = '127.0.0.1';

const nodeMajor = Number(process.versions.node.split('.')[0]);
if (nodeMajor < 22) {
  console.error(`the PDS needs Node 22 or later, and this is Node ${process.versions.node}; ` +
    'run it with target/pds-node/bin/node (installed by `scripts/install-deps.sh pds`)');
  process.exit(1);
}

// Both servers call `listen(port)` without a host, which binds every interface. Every TCP
// listener of this process is forced onto the loopback address instead.
const originalListen = net.Server.prototype.listen;
net.Server.prototype.listen = function listenOnLoopback(...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') {
    args.splice(1, 0, LOOPBACK);
  } else if (args[0] !== null && typeof args[0] === 'object' && 'port' in args[0] && !args[0].host) {
    args[0] = { ...args[0], host: LOOPBACK };
  }
  return originalListen.apply(this, args);
};

// Imported after the patch so that no listener is created before it.
const { PlcServer, Database: PlcDatabase } = await import('@did-plc/server');
const { PDS, envToCfg, envToSecrets } = await import('@atproto/pds');

/** Returns a port that was free on 127.0.0.1 a moment ago. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    originalListen.call(server, 0, LOOPBACK, () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const dataDirectory = await fs.mkdtemp(path.join(os.tmpdir(), 'atkafka-pds-'));
let plc;
let pds;
let stopping = false;

async function stop(exitCode) {
  if (stopping) return;
  stopping = true;
  try {
    await pds?.destroy();
    await plc?.destroy();
  } catch (error) {
    console.error('stopping the servers failed:', error);
    exitCode = 1;
  }
  await fs.rm(dataDirectory, { recursive: true, force: true });
  process.exit(exitCode);
}

process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));

try {
  plc = PlcServer.create({ db: PlcDatabase.mock(), port: 0 });
  const plcServer = await plc.start();
  const plcUrl = `http://${LOOPBACK}:${plcServer.address().port}`;

  const port = await freePort();
  const adminPassword = crypto.randomBytes(16).toString('hex');
  const blobDirectory = path.join(dataDirectory, 'blobs');
  await fs.mkdir(blobDirectory, { recursive: true });
  const env = {
    port,
    // `localhost` makes the public URL `http://localhost:PORT` and the service DID
    // `did:web:localhost`; any other hostname implies HTTPS.
    hostname: 'localhost',
    devMode: true,
    dataDirectory,
    blobstoreDiskLocation: blobDirectory,
    didPlcUrl: plcUrl,
    serviceHandleDomains: ['.test'],
    inviteRequired: false,
    crawlers: [],
    rateLimitsEnabled: false,
    jwtSecret: crypto.randomBytes(32).toString('hex'),
    adminPassword,
    // Any 32 random bytes are a valid secp256k1 private key except with negligible probability.
    plcRotationKeyK256PrivateKeyHex: crypto.randomBytes(32).toString('hex'),
  };
  pds = await PDS.create(envToCfg(env), envToSecrets(env));
  await pds.start();

  const pdsUrl = `http://${LOOPBACK}:${port}`;
  const health = await fetch(`${pdsUrl}/xrpc/_health`);
  if (!health.ok) {
    throw new Error(`the PDS health check at ${pdsUrl}/xrpc/_health returned HTTP ${health.status}`);
  }
  const ready = { plcUrl, pdsUrl, firehoseUrl: `ws://${LOOPBACK}:${port}`, adminPassword, dataDirectory };
  process.stdout.write(`${JSON.stringify(ready)}\n`);
} catch (error) {
  console.error('starting the PLC directory and the PDS failed:', error);
  await stop(1);
}

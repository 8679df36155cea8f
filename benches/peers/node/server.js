'use strict';
// Node.js peer of switchboard's "room chat" protocol, used as a benchmark baseline.
//
// Per connection it does what switchboard does: verify an HS256 JWT on connect, send the
// room's user list and last 50 messages, and for each chat message INSERT into SQLite
// (WAL, synchronous=NORMAL) before broadcasting it to everyone in the room.
//
// Env: PEER_LISTEN (default 127.0.0.1:8100, loopback only), PEER_DB (default
// ./peer-node.db), PEER_JWT_SECRET (default bench-secret).

const http = require('http');
const { performance } = require('perf_hooks');
const Database = require('better-sqlite3');
const jwt = require('jsonwebtoken');
const { WebSocketServer } = require('ws');

const HISTORY_LIMIT = 50;
const MAX_PAYLOAD = 64 * 1024;
const ROOM_RE = /^[A-Za-z0-9_.-]{1,100}$/;
const PATH_RE = /^\/ws\/(?:chat|rooms)\/([^/]*)\/?$/;

const CLOSE_BAD_ROOM = 4000;
const CLOSE_UNAUTHORIZED = 4001;

function fail(msg) {
  process.stderr.write(`peer-node: ${msg}\n`);
  process.exit(2);
}

function parseListen(value) {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(value);
  if (!m) fail(`invalid PEER_LISTEN ${JSON.stringify(value)} (want HOST:PORT)`);
  const host = m[1] || m[2];
  const port = Number(m[3]);
  if (port < 1 || port > 65535) fail(`invalid port in PEER_LISTEN: ${m[3]}`);
  const loopback = host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
  if (!loopback) fail(`PEER_LISTEN host ${host} is not a loopback address`);
  return { host, port };
}

const { host, port } = parseListen(process.env.PEER_LISTEN || '127.0.0.1:8100');
const secret = process.env.PEER_JWT_SECRET || 'bench-secret';
const dbPath = process.env.PEER_DB || './peer-node.db';

// ---------------------------------------------------------------- storage

const db = new Database(dbPath);
db.pragma('journal_mode = WAL');
db.pragma('synchronous = NORMAL');
db.pragma('busy_timeout = 5000');
db.exec(`
  CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    room TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at TEXT NOT NULL
  );
  CREATE INDEX IF NOT EXISTS messages_room_id ON messages (room, id);
`);
const insertStmt = db.prepare(
  'INSERT INTO messages (room, sender_id, sender_name, content, created_at) VALUES (?, ?, ?, ?, ?)'
);
const historyStmt = db.prepare(
  'SELECT sender_id, sender_name, content, created_at FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?'
);

// ---------------------------------------------------------------- helpers

// ISO-8601 UTC with microseconds, e.g. 2024-03-14T12:00:00.123456Z.
function timestamp() {
  const micros = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  const ms = Math.floor(micros / 1000);
  const iso = new Date(ms).toISOString(); // ...:SS.mmmZ
  const sub = String(micros % 1000).padStart(3, '0');
  return iso.slice(0, -1) + sub + 'Z';
}

// Ids read back from the database are text; canonical integers go out as numbers
// (what SimpleJWT issues), anything else as a string.
function idFromText(text) {
  if (/^-?(0|[1-9]\d{0,15})$/.test(text)) {
    const n = Number(text);
    if (Number.isSafeInteger(n)) return n;
  }
  return text;
}

function tokenFromRequest(url, req) {
  const q = url.searchParams.get('token');
  if (q) return q;
  const header = req.headers.authorization;
  if (typeof header === 'string') {
    const m = /^\s*bearer\s+(\S+)\s*$/i.exec(header);
    if (m) return m[1];
  }
  return null;
}

// Returns {id, key, name} or null.
function authenticate(token) {
  if (!token) return null;
  let claims;
  try {
    claims = jwt.verify(token, secret, { algorithms: ['HS256'] });
  } catch (_) {
    return null;
  }
  if (!claims || typeof claims !== 'object') return null;
  if (typeof claims.exp !== 'number') return null;
  if (claims.token_type !== undefined && claims.token_type !== 'access') return null;
  let id = claims.user_id !== undefined ? claims.user_id : claims.sub;
  if (typeof id === 'number') {
    if (!Number.isInteger(id)) return null;
  } else if (typeof id !== 'string' || id.length === 0) {
    return null;
  }
  const key = String(id);
  let name = [claims.name, claims.username].find((v) => typeof v === 'string' && v.length > 0);
  if (name === undefined) name = key;
  return { id, key, name };
}

// ---------------------------------------------------------------- rooms

// room name -> { sockets: Set<WebSocket>, users: Map<userKey, {id, name, count}> }
const rooms = new Map();

function roomState(name) {
  let r = rooms.get(name);
  if (!r) {
    r = { sockets: new Set(), users: new Map() };
    rooms.set(name, r);
  }
  return r;
}

function broadcast(r, data, except) {
  for (const ws of r.sockets) {
    if (ws !== except && ws.readyState === ws.OPEN) ws.send(data);
  }
}

function sendError(ws, error) {
  ws.send(JSON.stringify({ error }));
}

function onChatFrame(ws, room, user, data, isBinary) {
  if (isBinary) return sendError(ws, 'binary frames are not supported');
  let msg;
  try {
    msg = JSON.parse(data.toString('utf8'));
  } catch (_) {
    return sendError(ws, 'invalid JSON');
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
    return sendError(ws, 'expected a JSON object');
  }
  const text = msg.message;
  if (typeof text !== 'string' || text.trim().length === 0) {
    return sendError(ws, 'message is required and must be a non-empty string');
  }
  const ts = timestamp();
  try {
    insertStmt.run(room, user.key, user.name, text, ts); // stored before broadcast
  } catch (e) {
    process.stderr.write(`peer-node: insert failed: ${e.message}\n`);
    return sendError(ws, 'could not store message');
  }
  const frame = JSON.stringify({
    type: 'chat_message',
    message: text,
    sender_username: user.name,
    sender_id: user.id,
    timestamp: ts,
  });
  const r = rooms.get(room);
  if (r) broadcast(r, frame, null);
}

function onConnection(ws, req, url, roomRaw) {
  let room;
  try {
    room = decodeURIComponent(roomRaw);
  } catch (_) {
    room = null;
  }
  if (room === null || !ROOM_RE.test(room)) {
    ws.close(CLOSE_BAD_ROOM, 'invalid room name');
    return;
  }
  const user = authenticate(tokenFromRequest(url, req));
  if (!user) {
    ws.close(CLOSE_UNAUTHORIZED, 'unauthorized');
    return;
  }

  const r = roomState(room);
  r.sockets.add(ws);
  let entry = r.users.get(user.key);
  if (entry) {
    entry.count += 1;
  } else {
    entry = { id: user.id, name: user.name, count: 1 };
    r.users.set(user.key, entry);
    broadcast(r, JSON.stringify({ type: 'user_join', user_id: user.id, username: user.name }), ws);
  }

  const users = [];
  for (const u of r.users.values()) users.push({ id: u.id, username: u.name });
  ws.send(JSON.stringify({ type: 'room_users_list', users }));

  const rows = historyStmt.all(room, HISTORY_LIMIT);
  for (let i = rows.length - 1; i >= 0; i--) {
    const row = rows[i];
    ws.send(
      JSON.stringify({
        type: 'chat_message',
        message: row.content,
        sender_username: row.sender_name,
        sender_id: idFromText(row.sender_id),
        timestamp: row.created_at,
      })
    );
  }

  ws.on('message', (data, isBinary) => onChatFrame(ws, room, user, data, isBinary));
  ws.on('error', () => {});
  ws.on('close', () => {
    r.sockets.delete(ws);
    const e = r.users.get(user.key);
    if (e) {
      e.count -= 1;
      if (e.count <= 0) {
        r.users.delete(user.key);
        broadcast(r, JSON.stringify({ type: 'user_leave', user_id: user.id, username: user.name }), null);
      }
    }
    if (r.sockets.size === 0 && r.users.size === 0) rooms.delete(room);
  });
}

// ---------------------------------------------------------------- server

const server = http.createServer((req, res) => {
  res.writeHead(426, { 'Content-Type': 'text/plain' });
  res.end('WebSocket endpoint: /ws/chat/{room}/\n');
});

const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_PAYLOAD, perMessageDeflate: false });

server.on('upgrade', (req, socket, head) => {
  let url;
  try {
    url = new URL(req.url, 'http://localhost');
  } catch (_) {
    url = null;
  }
  const m = url && PATH_RE.exec(url.pathname);
  if (!m) {
    socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, req, url, m[1]));
});

server.on('error', (e) => fail(`cannot listen on ${host}:${port}: ${e.message}`));

server.listen(port, host, () => {
  const shown = host.includes(':') ? `[${host}]` : host;
  process.stdout.write(`listening on ${shown}:${port}\n`);
});

function shutdown() {
  for (const ws of wss.clients) ws.terminate();
  server.close();
  try {
    db.close();
  } catch (_) {}
  process.exit(0);
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);

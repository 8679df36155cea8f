// switchboard console: polls the server API with the key the user gives once (kept in
// sessionStorage), and opens WebSockets to the WebSocket listener for "Try it". No
// framework, nothing fetched from elsewhere; every text from the server goes into the
// page as textContent.
'use strict';

(function () {
  var KEY_ITEM = 'switchboard.apiKey';
  var STATS_EVERY_MS = 1500;
  var RECENT_EVERY_MS = 3000;
  var TOKEN_TTL_SECS = 300;
  // Rates are taken over the readings of the last few seconds, so that a burst shows
  // for as long as that, not for one reading.
  var RATE_WINDOW_MS = 5000;

  // The 12 WebSocket endpoints, and each seed document's example client frames, taken
  // from the documents (shared/seeds/, docs/protocols.md). `param`: what the path's
  // {…} is; 'user' fills it with the user id.
  var DOCS = {
    '000': 'the banking backend\'s document (000)', '001': 'the consultation app\'s document (001)',
    '002': 'the customer-support inbox\'s document (002)', '003': 'the ERP\'s document (003)',
    '004': 'the room chat document (004)'
  };
  var EXAMPLES = {
    rooms: [['chat message', {message: 'Hello world!'}]],
    consultation: [
      ['chat_message', {type: 'chat_message', message: 'Hello, how can I help?'}],
      ['typing', {type: 'typing', is_typing: true}],
      ['read_receipt', {type: 'read_receipt', message_id: 'uuid'}]
    ],
    support: [
      ['chat_message', {type: 'chat_message', content: 'Hello, how can I help you?'}],
      ['typing', {type: 'typing', is_typing: true}],
      ['mark_read', {type: 'mark_read'}]
    ]
  };
  var ENDPOINTS = [
    {path: '/ws/chat/{id}/', param: 'room or conversation id', value: 'lobby', doc: 'chat', chat: true},
    {path: '/ws/rooms/{room}/', param: 'room', value: 'lobby', doc: '004', examples: EXAMPLES.rooms},
    {path: '/ws/consultations/{id}/', param: 'consultation id', value: 'c-1001', doc: '001',
      examples: EXAMPLES.consultation, note: 'members only: create it with POST /api/conversations first'},
    {path: '/ws/conversations/{id}/', param: 'conversation id', value: 'conv123', doc: '002',
      examples: EXAMPLES.support, note: 'members only: create it with POST /api/conversations first'},
    {path: '/ws/conversations/', doc: '002', examples: [
      ['get_conversations', {type: 'get_conversations'}],
      ['refresh_conversations', {type: 'refresh_conversations'}]]},
    {path: '/ws/v1/chat/', doc: '003', examples: [
      ['chat_message', {type: 'chat_message', message: 'Hello, are you available?', recipient_id: 5}],
      ['mark_read', {type: 'mark_read', sender_id: 5}],
      ['typing', {type: 'typing', recipient_id: 5}]],
      note: 'the recipient must have connected once'},
    {path: '/ws/presence/', doc: '001', examples: []},
    {path: '/ws/notifications/', doc: '001', examples: [
      ['mark_read', {type: 'mark_read', notification_id: 'uuid'}]]},
    {path: '/ws/v1/notifications/', doc: '003', examples: []},
    {path: '/ws/notifications/{user_id}/', param: 'user', doc: '000', examples: []},
    {path: '/ws/messages/{user_id}/', param: 'user', doc: '000', examples: [
      ['mark_read', {type: 'mark_read', message_id: 123}]]},
    {path: '/ws/fraud-alerts/{user_id}/', param: 'user', doc: '000', examples: []}
  ];

  // Close codes switchboard uses (src/context.rs close_code, src/endpoints/, docs/protocols.md),
  // and the ones a browser reports by itself.
  var CLOSE_CODES = {
    1000: 'normal closure: the socket was closed on purpose',
    1001: 'going away: the server is shutting down, or the idle timeout passed with nothing from the client',
    1002: 'protocol error: the client broke the WebSocket protocol',
    1005: 'no status: the close frame carried no code',
    1006: 'abnormal closure: the connection dropped without a close frame (nothing listening, ' +
      'an upgrade refused, such as an Origin not in SWITCHBOARD_ALLOWED_ORIGINS, or a reset)',
    1007: 'invalid data: a text frame that is not UTF-8',
    1008: 'policy violation: too much sent before the session opened, or a ?since= ahead of the stream',
    1009: 'message too big: larger than SWITCHBOARD_MAX_MESSAGE_BYTES',
    1011: 'internal error: the server hit an unexpected condition',
    1012: 'service restart: the session missed events that are no longer kept; reconnect for a fresh snapshot',
    1013: 'try again later: past the per-user connection cap (or the store is saturated)',
    4000: 'invalid room name: 1-100 letters, digits, _, - or .',
    4001: 'refused token: missing, malformed, expired or badly signed (or logged out by the backend)',
    4003: 'forbidden: not a member of this conversation, another user\'s resource, or (on /ws/v1/) a refused token'
  };

  var $ = function (id) { return document.getElementById(id); };
  var apiKey = sessionStorage.getItem(KEY_ITEM);
  var stats = null;
  var readings = [];
  var timers = [];
  var socket = null;

  function setStatus(text, kind) {
    var s = $('status');
    s.textContent = text;
    s.className = 'status' + (kind ? ' ' + kind : '');
  }

  // ------------------------------------------------------------------ the API key

  function askKey(message) {
    stopPolling();
    $('key-dialog').hidden = false;
    $('key-error').hidden = !message;
    $('key-error').textContent = message || '';
    $('key-input').value = '';
    $('key-input').focus();
    setStatus('waiting for the API key');
  }

  function saveKey() {
    var key = $('key-input').value.trim();
    if (!key) { $('key-error').hidden = false; $('key-error').textContent = 'Enter the key.'; return; }
    apiKey = key;
    sessionStorage.setItem(KEY_ITEM, key);
    $('key-dialog').hidden = true;
    startPolling();
  }

  function forgetKey() {
    sessionStorage.removeItem(KEY_ITEM);
    apiKey = null;
    askKey('');
  }

  // Every call carries the key; a 401 asks for it again.
  function api(method, path, body) {
    var init = {method: method, headers: {'Authorization': 'Bearer ' + apiKey}, cache: 'no-store'};
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (json) {
        if (response.status === 401) {
          sessionStorage.removeItem(KEY_ITEM);
          askKey('The server refused that key: ' + (json.error || 'unauthorized'));
          throw new Error('unauthorized');
        }
        if (!response.ok) { throw new Error(json.error || ('HTTP ' + response.status)); }
        return json;
      });
    });
  }

  // ------------------------------------------------------------------ live figures

  function startPolling() {
    stopPolling();
    pollStats();
    pollRecent();
    timers.push(setInterval(pollStats, STATS_EVERY_MS));
    timers.push(setInterval(pollRecent, RECENT_EVERY_MS));
  }

  function stopPolling() {
    timers.forEach(clearInterval);
    timers = [];
  }

  function pollStats() {
    Promise.all([api('GET', '/api/stats'), api('GET', '/api/online')]).then(function (both) {
      showStats(both[0]);
      showUsers(both[1].users || []);
      setStatus('live', 'ok');
    }).catch(function (e) {
      if (e.message !== 'unauthorized') { setStatus('cannot reach the server API: ' + e.message, 'bad'); }
    });
  }

  function pollRecent() {
    api('GET', '/api/conversations?limit=20').then(function (json) {
      showRecent(json.conversations || []);
    }).catch(function () {});
  }

  function sum(object) {
    return Object.keys(object || {}).reduce(function (total, k) { return total + object[k]; }, 0);
  }

  function rate(name) {
    var first = readings[0];
    var last = readings[readings.length - 1];
    var seconds = (last.at - first.at) / 1000;
    if (readings.length < 2 || seconds <= 0) { return '–'; }
    var r = (last.counters[name] - first.counters[name]) / seconds;
    return r >= 100 ? String(Math.round(r)) : r.toFixed(1);
  }

  function showStats(s) {
    var now = performance.now();
    readings.push({at: now, counters: s.counters});
    while (readings.length > 2 && now - readings[1].at >= RATE_WINDOW_MS) { readings.shift(); }
    var first = stats === null;
    stats = s;
    $('server').textContent = 'v' + s.version + ' · ' + s.storage + ' · up ' + duration(s.uptime_secs) +
      (s.ws_url ? ' · ' + s.ws_url : '');
    if (first && s.ws_url && !$('try-ws').value) { $('try-ws').value = s.ws_url; }
    if (first) { showEndpoint(); }
    if (!s.mints_tokens) {
      $('try-connect').disabled = true;
      state('This server verifies tokens with a public key (SWITCHBOARD_JWT_ALGORITHM): only your backend ' +
        'can sign them, so the console cannot connect for you.', 'closed');
    }
    $('t-users').textContent = s.users_online;
    $('t-conns').textContent = s.connections_open;
    $('t-msgs').textContent = rate('messages_stored_total');
    $('t-deliveries').textContent = rate('frames_out_total');
    $('t-slow').textContent = s.counters.slow_consumer_disconnects_total;
    var tokens = sum(s.auth_failures);
    var refused = s.counters.connections_refused_total;
    var limited = s.counters.rate_limited_total;
    $('t-refusals').textContent = tokens + refused + limited;
    $('t-refusals-detail').textContent = tokens + ' tokens · ' + refused + ' at a cap · ' + limited + ' rate-limited';
    var rows = Object.keys(s.open_connections).filter(function (k) { return s.open_connections[k] > 0; })
      .map(function (k) { return [k, cell(s.open_connections[k], 'num')]; });
    fill($('endpoints'), rows, 2, 'none');
  }

  function showUsers(users) {
    fill($('users'), users.map(function (u) {
      return [String(u.user_id), u.name, cell(u.connections, 'num')];
    }), 3, 'nobody');
  }

  function showRecent(conversations) {
    fill($('recent'), conversations.map(function (c) {
      return [c.kind, c.id, cell(c.kind === 'room' ? '–' : c.members, 'num'), cell(c.online, 'num'),
        ago(c.updated_at)];
    }), 5, 'none yet');
  }

  function cell(text, className) { return {text: String(text), className: className}; }

  function fill(tbody, rows, columns, empty) {
    var fragment = document.createDocumentFragment();
    if (rows.length === 0) { rows = [[cell(empty, 'muted')]]; }
    rows.forEach(function (row) {
      var tr = document.createElement('tr');
      row.forEach(function (value) {
        var td = document.createElement('td');
        if (value && typeof value === 'object') {
          td.textContent = value.text;
          td.className = value.className;
        } else {
          td.textContent = value;
        }
        if (row.length === 1) { td.colSpan = columns; }
        tr.appendChild(td);
      });
      fragment.appendChild(tr);
    });
    tbody.replaceChildren(fragment);
  }

  function duration(secs) {
    if (secs < 120) { return secs + ' s'; }
    if (secs < 7200) { return Math.floor(secs / 60) + ' min'; }
    if (secs < 172800) { return Math.floor(secs / 3600) + ' h'; }
    return Math.floor(secs / 86400) + ' d';
  }

  function ago(timestamp) {
    var secs = Math.max(0, Math.round((Date.now() - Date.parse(timestamp)) / 1000));
    return duration(secs) + ' ago';
  }

  // ------------------------------------------------------------------ try it

  function endpoint() { return ENDPOINTS[Number($('try-endpoint').value)]; }

  // The /ws/chat/{id}/ endpoint speaks what SWITCHBOARD_CHAT_PROTOCOL says.
  function examplesOf(e) {
    if (!e.chat) { return e.examples; }
    return EXAMPLES[(stats && stats.chat_protocol) || 'rooms'];
  }

  function docOf(e) {
    if (!e.chat) { return DOCS[e.doc]; }
    var protocol = (stats && stats.chat_protocol) || 'rooms';
    return {rooms: DOCS['004'], consultation: DOCS['001'], support: DOCS['002']}[protocol] +
      ' (SWITCHBOARD_CHAT_PROTOCOL=' + protocol + ')';
  }

  function showEndpoint() {
    var e = endpoint();
    var label = $('try-param-label');
    label.hidden = !e.param || e.param === 'user';
    if (e.param && e.param !== 'user') {
      label.firstChild.textContent = e.param + ' ';
      $('try-param').value = e.value;
    }
    var examples = examplesOf(e);
    $('try-doc').textContent = e.path + ' speaks ' + docOf(e) +
      (examples.length ? '' : '; the document defines no client frames') + (e.note ? '; ' + e.note : '') + '.';
    var box = $('try-examples');
    box.replaceChildren();
    examples.forEach(function (example) {
      var button = document.createElement('button');
      button.type = 'button';
      button.className = 'example';
      button.textContent = 'send ' + example[0];
      button.title = JSON.stringify(example[1]);
      button.disabled = !socket || socket.readyState !== WebSocket.OPEN;
      button.addEventListener('click', function () { send(JSON.stringify(example[1])); });
      box.appendChild(button);
    });
    if (examples.length) { $('try-frame').value = JSON.stringify(examples[0][1]); }
  }

  function pathOf(e) {
    var user = $('try-user').value.trim();
    var param = e.param === 'user' ? user : $('try-param').value.trim();
    return e.path.replace(/\{[a-z_]+\}/, encodeURIComponent(param));
  }

  function log(kind, text) {
    var li = document.createElement('li');
    li.className = kind;
    var dir = document.createElement('span');
    dir.className = 'dir';
    dir.textContent = {in: '← in', out: '→ out', info: '·', close: '✕'}[kind];
    var time = new Date().toISOString().slice(11, 23);
    li.appendChild(dir);
    li.appendChild(document.createTextNode(time + '  ' + text));
    var list = $('try-log');
    list.appendChild(li);
    list.scrollTop = list.scrollHeight;  // the log scrolls, not the page
  }

  function setConnected(open) {
    $('try-connect').disabled = open;
    $('try-disconnect').disabled = !open;
    $('try-send').disabled = !open;
    $('try-endpoint').disabled = open;
    Array.prototype.forEach.call($('try-examples').children, function (b) { b.disabled = !open; });
  }

  function state(text, kind) {
    $('try-state').textContent = text;
    $('try-state').className = 'state ' + (kind || '');
  }

  function connect() {
    var e = endpoint();
    var user = $('try-user').value.trim();
    var name = $('try-name').value.trim();
    var base = $('try-ws').value.trim().replace(/\/+$/, '');
    if (!user) { state('Enter a user id.', 'closed'); return; }
    if (!/^wss?:\/\//.test(base)) { state('The WebSocket URL starts with ws:// or wss://.', 'closed'); return; }
    $('try-connect').disabled = true;
    var request = {user_id: user, ttl_secs: TOKEN_TTL_SECS};
    if (name) { request.user_name = name; }
    api('POST', '/api/tokens', request).then(function (minted) {
      var path = pathOf(e);
      log('info', 'token for user ' + user + ' (valid until ' + minted.expires_at + '); connecting to ' + base + path);
      open(base + path + '?token=' + encodeURIComponent(minted.token));
    }).catch(function (error) {
      $('try-connect').disabled = false;
      state('No token: ' + error.message, 'closed');
    });
  }

  function open(url) {
    var ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      $('try-connect').disabled = false;
      state('Cannot connect: ' + error.message, 'closed');
      return;
    }
    socket = ws;
    state('connecting…');
    // A URL the page's policy does not allow is neither refused by the constructor nor
    // closed: the browser only reports the violation.
    var blocked = function (event) {
      if (socket !== ws || !/^wss?:/.test(event.blockedURI)) { return; }
      document.removeEventListener('securitypolicyviolation', blocked);
      socket = null;
      var text = 'not connected: the page\'s Content-Security-Policy allows WebSockets only to the ' +
        'WebSocket listener (as /api/stats gives it) and to this page\'s own origin';
      log('close', text);
      state(text, 'closed');
      setConnected(false);
    };
    document.addEventListener('securitypolicyviolation', blocked);
    ws.addEventListener('close', function () { document.removeEventListener('securitypolicyviolation', blocked); });
    ws.addEventListener('open', function () { document.removeEventListener('securitypolicyviolation', blocked); });
    ws.addEventListener('open', function () {
      if (socket !== ws) { return; }
      state('open', 'open');
      log('info', 'open');
      setConnected(true);
    });
    ws.addEventListener('message', function (event) {
      log('in', typeof event.data === 'string' ? event.data : '[binary frame]');
    });
    ws.addEventListener('close', function (event) {
      var meaning = CLOSE_CODES[event.code] || (event.code >= 4000 ? 'an application code' : 'a code switchboard does not use');
      var text = 'closed ' + event.code + (event.reason ? ' "' + event.reason + '"' : '') + ': ' + meaning;
      log('close', text);
      if (socket === ws) {
        socket = null;
        state(text, 'closed');
        setConnected(false);
      }
    });
  }

  function send(text) {
    if (!socket || socket.readyState !== WebSocket.OPEN) { return; }
    socket.send(text);
    log('out', text);
  }

  function init() {
    ENDPOINTS.forEach(function (e, i) {
      var option = document.createElement('option');
      option.value = String(i);
      option.textContent = e.path;
      $('try-endpoint').appendChild(option);
    });
    $('try-endpoint').addEventListener('change', showEndpoint);
    $('try-connect').addEventListener('click', connect);
    $('try-disconnect').addEventListener('click', function () { if (socket) { socket.close(1000); } });
    $('try-send').addEventListener('click', function () { send($('try-frame').value); });
    $('try-frame').addEventListener('keydown', function (event) {
      if (event.key === 'Enter') { send($('try-frame').value); }
    });
    $('key-form').addEventListener('submit', function (event) { event.preventDefault(); saveKey(); });
    $('forget-key').addEventListener('click', forgetKey);
    showEndpoint();
    if (apiKey) { startPolling(); } else { askKey(''); }
  }

  init();
}());

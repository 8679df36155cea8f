//! The application behind the event loop: sessions open, frames arrive, sessions close,
//! server API requests come in, and each turn ends with a commit. It decides what to
//! store and whom to tell, and hands the server an outbox of frames to write.
//!
//! The server owns sockets; the app owns the store, the hub and who is online. The app
//! never touches a socket: everything it wants sent goes into the outbox, which the
//! server applies only after `end_turn` has committed the turn's writes. That is how
//! "nothing is sent before it is stored" holds for every endpoint at once.

use std::collections::HashMap;
use std::time::Instant;

use crate::auth::{self, Verifier};
use crate::cluster::Said;
use crate::config::Config;
use crate::context::{Ctx, ErrorRenderer, OnlineUser, Out, Refusal, Session, Then, close_code};
use crate::endpoints;
use crate::engine::Engine;
use crate::engine::{OpenError, Opened};
use crate::http::{self, HttpError, Request};
use crate::hub::ConnId;
use crate::metrics::Metrics;
use crate::model::{Identity, Seq, UserId, now_micros};
use crate::request::Answer;
use crate::route::{Endpoint, route};

/// A per-user token bucket for the messages-per-minute limit.
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// What `App::admit` decided about a WebSocket request.
pub enum Admission {
    /// Answer with this HTTP response (an error with a JSON body) and close.
    Refuse(Vec<u8>),
    /// Upgrade with the `101` answer `accept`; then the session runs, or the connection
    /// is closed with the refusal's code (a refused token or resource, after the 101 as
    /// the seed documents say).
    Upgrade { accept: Vec<u8>, session: Result<Session, Refusal> },
}

/// The dispatcher behind the event loop: it owns the context and calls the endpoints
/// and the server API with it.
pub struct App {
    pub ctx: Ctx,
    pub verifier: Verifier,
    buckets: HashMap<UserId, Bucket>,
    /// Connections whose frames this turn wrote to the store, with their endpoint's
    /// error frame: if the commit fails, each is told its message was not stored.
    writers: Vec<(ConnId, ErrorRenderer)>,
    /// Sessions whose connection ended while their requests were not answered yet: they
    /// close once those are (`finish_closing`), so their last messages reach the others
    /// before they leave.
    closing: Vec<Session>,
    /// The buffer `answer_inline` hands answers on from.
    answered: Vec<(Then, Answer)>,
    /// Per user, sessions waiting for their engine's answer to open: they count toward
    /// the per-user cap as if open.
    opening: HashMap<UserId, usize>,
}

impl App {
    pub fn new(config: Config, verifier: Verifier, api_key: String, engine: Engine) -> App {
        App {
            ctx: Ctx::new(config, api_key, engine),
            verifier,
            buckets: HashMap::new(),
            writers: Vec::new(),
            closing: Vec::new(),
            answered: Vec::new(),
            opening: HashMap::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.ctx.config
    }

    pub fn metrics(&mut self) -> &mut Metrics {
        &mut self.ctx.metrics
    }

    pub fn begin_turn(&mut self) {
        self.ctx.now = now_micros();
    }

    /// Decides about a complete WebSocket request: the route (404), the upgrade headers
    /// (`426`/`400`), the `Origin` allow-list (403), then the token and the session. The
    /// server only carries the decision out on the socket.
    pub fn admit(&mut self, conn: ConnId, request: &Request) -> Admission {
        let config = &self.ctx.config;
        let origin_refused = !config.allowed_origins.is_empty()
            && request
                .header_str("Origin")
                .is_some_and(|origin| !config.allowed_origins.iter().any(|o| o == origin.trim_end_matches('/')));
        let Some(endpoint) = route(&request.path, config.chat_protocol) else {
            return Admission::Refuse(HttpError::new(404, "no WebSocket endpoint at this path").to_response());
        };
        let ws_key = match http::websocket_key(request) {
            Ok(key) => key,
            Err(error) => return Admission::Refuse(error.to_response()),
        };
        if origin_refused {
            return Admission::Refuse(HttpError::new(403, "origin not allowed").to_response());
        }
        let accept = http::upgrade_response(&ws_key);
        let token = auth::token_from_request(request.query.as_deref(), request.header("Authorization"));
        let identity = match token {
            Some(token) => self.verifier.verify(&token),
            None => Err(auth::AuthError::Missing),
        };
        #[cfg(feature = "echo")]
        let identity = match endpoint {
            Endpoint::Echo => {
                Ok(Identity { user_id: UserId::new(&format!("echo-{}", conn.serial)), name: "echo".into() })
            }
            _ => identity,
        };
        let session = match (identity, since_from_query(request.query.as_deref())) {
            (Ok(_), Err(refusal)) => Err(refusal),
            (Ok(identity), Ok(since)) => self.open(conn, endpoint, identity, since),
            (Err(error), _) => {
                self.ctx.metrics.auth_failure(error);
                log::info!("refused conn={} path={}: token {}", conn.serial, request.path, error.reason());
                Err(Refusal::new(endpoint.auth_close_code(), "unauthorized"))
            }
        };
        Admission::Upgrade { accept, session }
    }

    /// Opens a session on an upgraded, authenticated connection, or says why not (called
    /// by `admit`; the fuzz fixture calls it directly).
    pub fn open(
        &mut self,
        conn: ConnId,
        endpoint: Endpoint,
        identity: Identity,
        since: Option<Seq>,
    ) -> Result<Session, Refusal> {
        let user_conns = self.ctx.online.get(&identity.user_id).map_or(0, |u| u.conns.len());
        let opening = self.opening.get(&identity.user_id).copied().unwrap_or(0);
        if user_conns + opening >= self.ctx.config.limits.max_connections_per_user {
            return Err(Refusal::new(close_code::TRY_AGAIN_LATER, "too many connections for this user"));
        }
        if user_conns == 0
            && let Err(e) = self.ctx.engine.seen(&identity.user_id, &identity.name, self.ctx.now)
        {
            log::error!("cannot record user: {e}");
            return Err(Refusal::new(close_code::INTERNAL_ERROR, "internal error"));
        }
        let mut session =
            Session { conn, identity, endpoint, topics: Vec::with_capacity(1), conversation: None, opening: None };
        // With Redis, the user's cap over all nodes decides too: the session waits for
        // that (and for its engine's answer, asked meanwhile) before it opens.
        let admitting = self.ctx.cluster.is_some();
        if admitting {
            session.opening_mut().admitting = true;
            *self.opening.entry(session.identity.user_id.clone()).or_default() += 1;
            self.tell_online(&session.identity, Some(conn));
        }
        // Storage as data: what the session needs is read by the engine, inline for the
        // local engine; an engine that answers later leaves the session opening.
        let load = match endpoints::load(&self.ctx, &mut session, since) {
            Ok(load) => load,
            Err(refusal) => {
                if admitting {
                    self.opened_or_refused(&session.identity.user_id);
                    self.tell_online(&session.identity, None);
                }
                return Err(refusal);
            }
        };
        let opened = match load {
            None => None,
            Some(load) => match self.ctx.engine.open(conn, load, self.ctx.now) {
                Some(answer) => Some(answer),
                None => {
                    session.opening_mut();
                    if !admitting {
                        *self.opening.entry(session.identity.user_id.clone()).or_default() += 1;
                    }
                    return Ok(session);
                }
            },
        };
        if admitting {
            session.opening_mut().held = Some(opened);
            return Ok(session);
        }
        endpoints::opened(&mut self.ctx, &mut session, opened)?;
        session.opening = None;
        self.register(&session, user_conns);
        Ok(session)
    }

    /// With Redis: tells the presence lane how many connections this node holds of a
    /// user (open, and opening: they count toward the cap); with `admit`, that one is
    /// opening and hears whether the cap over all nodes admits it (`admitted`).
    fn tell_online(&self, identity: &Identity, admit: Option<ConnId>) {
        let Some(cluster) = &self.ctx.cluster else { return };
        let user = &identity.user_id;
        let open = self.ctx.online.get(user).map_or(0, |u| u.conns.len());
        let count = open + self.opening.get(user).copied().unwrap_or(0);
        let cap = self.ctx.config.limits.max_connections_per_user as u32;
        cluster.set(crate::cluster::ONLINE, user, &identity.name, count as u32, admit.map(|conn| (conn, cap)));
    }

    /// With Redis: whether an opening session's user is within their cap over all
    /// nodes. It opens (once its engine's answer is there too), or closes with 1013.
    pub fn admitted(&mut self, session: &mut Session, ok: bool) {
        let Some(opening) = session.opening.as_mut().filter(|o| o.admitting) else { return };
        opening.admitting = false;
        if !ok {
            opening.refused = true;
            self.opened_or_refused(&session.identity.user_id);
            self.tell_online(&session.identity, None);
            self.ctx.metrics.connections_refused += 1;
            let reason = "too many connections for this user";
            return self.ctx.close_conn(session.conn, close_code::TRY_AGAIN_LATER, reason);
        }
        if let Some(held) = opening.held.take() {
            self.complete_open(session, held);
        }
    }

    /// A session waiting for its engine's answer got it: it no longer counts as opening.
    fn opened_or_refused(&mut self, user: &UserId) {
        if let Some(count) = self.opening.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                self.opening.remove(user);
            }
        }
    }

    /// A session is open: its user is online (presence hears of a first connection).
    fn register(&mut self, session: &Session, user_conns: usize) {
        let conn = session.conn;
        let identity = &session.identity;
        let user = self
            .ctx
            .online
            .entry(identity.user_id.clone())
            .or_insert_with(|| OnlineUser { name: identity.name.clone(), conns: Vec::with_capacity(1) });
        user.name = identity.name.clone();
        user.conns.push(conn);
        if user_conns == 0 {
            endpoints::presence::user_online(&mut self.ctx, &session.identity, Some(conn));
            // With Redis, the node that delivers webhooks reports who is online in the
            // cluster (`presence::refresh`); else each node its own users.
            if self.ctx.cluster.is_none() {
                self.ctx.hook(crate::webhook::presence_hook(&identity.user_id, Some(&identity.name), true));
            }
        }
        self.ctx.metrics.connection_opened(session.endpoint.name());
    }

    /// At the start of a turn: the engine's answers for opening sessions that came
    /// since the last turn (none from the local engine, which answers inline). The server
    /// hands each to its session with `finish_open`.
    pub fn ready_opens(&mut self) -> Vec<(ConnId, Result<Opened, OpenError>)> {
        self.ctx.engine.ready(self.ctx.now)
    }

    /// An opening session's answer: it opens (or is closed with its refusal), then handles
    /// the frames its client sent meanwhile, in order. One still waiting for its
    /// admission keeps the answer until then.
    pub fn finish_open(&mut self, session: &mut Session, answer: Result<Opened, OpenError>) {
        match session.opening.as_mut() {
            None => {}
            Some(opening) if opening.admitting => opening.held = Some(Some(answer)),
            Some(_) => self.complete_open(session, Some(answer)),
        }
    }

    fn complete_open(&mut self, session: &mut Session, answer: Option<Result<Opened, OpenError>>) {
        self.opened_or_refused(&session.identity.user_id);
        let user_position = answer.as_ref().and_then(|a| a.as_ref().ok()).and_then(|opened| opened.user_position);
        match endpoints::opened(&mut self.ctx, session, answer) {
            Ok(()) => {
                let early = session.opening.take().map(|o| o.early).unwrap_or_default();
                let user_conns = self.ctx.online.get(&session.identity.user_id).map_or(0, |u| u.conns.len());
                self.register(session, user_conns);
                if let Some(position) = user_position {
                    self.ctx.follow_user(&session.identity.user_id, position);
                }
                self.deliver();
                for text in early {
                    self.on_text(session, &text);
                }
            }
            Err(refusal) => {
                // It stays opening: it never opened, and closes now.
                session.opening_mut().refused = true;
                self.tell_online(&session.identity, None);
                self.ctx.close_conn(session.conn, refusal.code, &refusal.reason);
            }
        }
    }

    /// A text frame from a client.
    pub fn on_text(&mut self, session: &mut Session, text: &str) {
        if let Some(opening) = session.opening.as_mut() {
            // Held until the session is open, within bounds.
            if opening.early.len() >= crate::context::MAX_EARLY_FRAMES
                || opening.early_bytes + text.len() > crate::context::MAX_EARLY_BYTES
            {
                let reason = "too much sent before the session opened";
                return self.ctx.close_conn(session.conn, close_code::POLICY_VIOLATION, reason);
            }
            opening.early_bytes += text.len();
            opening.early.push(text.to_string());
            return;
        }
        self.ctx.metrics.frames_in += 1;
        self.ctx.metrics.bytes_in += text.len() as u64;
        if !self.take_rate_token(&session.identity.user_id) {
            return endpoints::rate_limited(&mut self.ctx, session);
        }
        let writes = self.ctx.engine.writes_this_turn();
        let limited = self.ctx.rate_limited_asks;
        endpoints::on_text(&mut self.ctx, session, text);
        if self.ctx.rate_limited_asks != limited && self.ctx.cluster.as_ref().is_some_and(|c| c.up) {
            // A message to store: the limit over all nodes decides (the writer lane asks
            // Redis, design/cluster.md §5.8); this node's bucket counts what stores
            // nothing (typing), and everything while Redis is away.
            self.give_rate_token(&session.identity.user_id);
        }
        self.deliver();
        self.answer_inline(Some(session));
        if self.ctx.engine.writes_this_turn() != writes {
            self.writers.push((session.conn, endpoints::error_renderer(&session.endpoint)));
        }
    }

    /// A binary frame from a client.
    pub fn on_binary(&mut self, session: &mut Session, data: &tungstenite::Bytes) {
        self.ctx.metrics.frames_in += 1;
        self.ctx.metrics.bytes_in += data.len() as u64;
        endpoints::on_binary(&mut self.ctx, session, data);
    }

    /// A session ended, for whatever reason. Its subscriptions go, and whoever should
    /// hear of it does.
    pub fn close(&mut self, session: Session) {
        if let Some(opening) = &session.opening {
            // Never opened: nothing subscribed, not online. Still waiting for its answer
            // (not refused by it), it counted toward the cap until now.
            if !opening.refused {
                self.opened_or_refused(&session.identity.user_id);
                self.tell_online(&session.identity, None);
            }
            return;
        }
        if self.ctx.asking(session.conn) {
            return self.closing.push(session);
        }
        endpoints::close(&mut self.ctx, &session);
        let user = &session.identity.user_id;
        if let Some(online) = self.ctx.online.get_mut(user) {
            online.conns.retain(|c| *c != session.conn);
            if online.conns.is_empty() {
                self.ctx.online.remove(user);
                self.ctx.unfollow_user(user);
                endpoints::presence::user_offline(&mut self.ctx, user);
                if self.ctx.cluster.is_none() {
                    self.ctx.hook(crate::webhook::presence_hook(user, None, false));
                }
            }
        }
        self.tell_online(&session.identity, None);
        self.ctx.metrics.connection_closed(session.endpoint.name());
    }

    /// A complete request on the server API listener. What it asks of the engine is
    /// answered, and its reply queued, with that answer (`answer`); a write runs all or
    /// nothing, so a failed one leaves the rest of the turn untouched.
    pub fn on_api(&mut self, conn: ConnId, request: Request) {
        self.ctx.metrics.api_requests += 1;
        if request.method != "GET" && self.ctx.engine.saturated() {
            // Too many writes wait for their commit (a PostgreSQL node under load): the
            // backend is told to try again rather than queued without bound.
            self.ctx.metrics.writes_refused += 1;
            let response = crate::api::busy().to_response();
            self.ctx.outbox.push(Out::Http { to: conn, response, durable: false });
            return;
        }
        if let Some(response) = crate::api::handle(&mut self.ctx, conn, &request) {
            self.ctx.outbox.push(Out::Http { to: conn, response, durable: false });
        }
        self.deliver();
        self.answer_inline(None);
    }

    /// At the start of a turn: answers to requests the engine gave since the last turn
    /// (none from the local engine, which answers inline), each with whether it answers a
    /// write. The server hands each to `answer_later` with the session that asked, if it
    /// is still open.
    pub fn ready_answers(&mut self) -> Vec<(Then, Answer, bool)> {
        let answers = self.ctx.ready_answers();
        self.deliver();
        self.ctx.follow_streams();
        answers
    }

    /// An answer that came in a later turn: as `answer`, and a session whose write was
    /// stored in this turn is told if the commit fails (see `end_turn`).
    pub fn answer_later(&mut self, session: Option<&Session>, then: Then, answer: Answer, write: bool) {
        if let (Some(session), true, Ok(_)) = (session, write, &answer) {
            self.writers.push((session.conn, endpoints::error_renderer(&session.endpoint)));
        }
        self.answer(session, then, answer);
    }

    /// Closes the sessions that were waiting for their answers to close (after
    /// `answer_later` has handed those on).
    pub fn finish_closing(&mut self) {
        if self.closing.is_empty() {
            return;
        }
        let (done, waiting) = std::mem::take(&mut self.closing).into_iter().partition(|s| !self.ctx.asking(s.conn));
        self.closing = waiting;
        for session in done {
            self.close(session);
        }
    }

    /// Does what `then` says with a request's answer: renders it on the session that asked
    /// (gone sessions are skipped: what the request stored stays, and its events reached
    /// everyone else), or queues the server API's reply.
    pub fn answer(&mut self, session: Option<&Session>, then: Then, answer: Answer) {
        match then {
            Then::Session { conn, render } => match session {
                Some(session) if session.conn == conn && session.opening.is_none() => {
                    render(&mut self.ctx, session, answer);
                }
                _ => log::debug!("conn={}: an answer for a session that is gone", conn.serial),
            },
            Then::Api { conn, render, durable } => {
                let reply = match render {
                    crate::context::ApiRender::Read(render) => render(&mut self.ctx, answer),
                    crate::context::ApiRender::Write(reply) => reply(answer),
                };
                let durable = durable && reply.is_ok();
                let response = crate::api::response_of(reply);
                self.ctx.outbox.push(Out::Http { to: conn, response, durable });
            }
        }
    }

    /// Answers the local engine gave while the handler ran, for `session` (the one that
    /// handled a frame) or the server API.
    fn answer_inline(&mut self, session: Option<&Session>) {
        let mut answers = std::mem::take(&mut self.answered);
        self.ctx.take_answers(&mut answers);
        for (then, answer) in answers.drain(..) {
            self.answer(session, then, answer);
        }
        self.answered = answers;
    }

    /// Hands what the last handler emitted to the endpoints to render and queue.
    fn deliver(&mut self) {
        for event in self.ctx.take_in_order() {
            endpoints::deliver_in_order(&mut self.ctx, &event);
        }
        for event in self.ctx.take_events() {
            endpoints::deliver(&mut self.ctx, event);
        }
    }

    /// Commits the turn's writes and returns what to send. When the commit fails, frames
    /// that report stored data are dropped, API answers become 503s, and every client
    /// whose message was not stored gets its endpoint's error frame.
    pub fn end_turn(&mut self) -> Vec<Out> {
        let mut outbox = std::mem::take(&mut self.ctx.outbox);
        match self.ctx.engine.commit() {
            Ok(0) => {}
            Ok(writes) => self.ctx.metrics.committed(writes),
            Err(e) => {
                log::error!("commit failed, the turn's writes are rolled back: {e}");
                self.ctx.metrics.commit_failures += 1;
                // What is kept may include this turn's messages, which are not stored,
                // and the numbers they took will be taken again.
                self.ctx.recent.clear();
                self.ctx.rewind_streams();
                outbox.retain(|out| !matches!(out, Out::Frame { durable: true, .. }));
                for out in &mut outbox {
                    if let Out::Http { response, durable: true, .. } = out {
                        *response = crate::api::unavailable().to_response();
                    }
                }
                for (to, render) in &self.writers {
                    let frame = render("Message could not be stored; please try again.");
                    outbox.push(Out::Frame { to: vec![*to], frame, durable: false });
                }
            }
        }
        // Cleared, not replaced: a busy loop keeps the same buffer from turn to turn.
        self.writers.clear();
        if self.ctx.engine.hooks_committed()
            && let Some(webhooks) = &self.ctx.webhooks
        {
            webhooks.delivery.nudge();
        }
        outbox
    }

    /// After the turn's output has been handed to the sockets: housekeeping that may take
    /// a moment (see `Store::finish_checkpoint`).
    pub fn after_turn(&mut self) {
        self.ctx.engine.after_turn();
        if self.ctx.config.retention.is_on() && self.ctx.engine.retention_due().is_some_and(|at| Instant::now() >= at) {
            self.prune_retention();
        }
    }

    /// Deletes what is past keeping for about a millisecond (between turns).
    fn prune_retention(&mut self) {
        let (online, hub) = (&self.ctx.online, &self.ctx.hub);
        let live = crate::store::Live {
            online: &|user| online.contains_key(&UserId::new(user)),
            listened: &|conversation| !hub.conns(&crate::hub::Topic::Conversation(conversation)).is_empty(),
        };
        let rules = self.ctx.config.retention;
        self.ctx.engine.prune_retention(&rules, crate::model::now_micros(), &live);
    }

    /// What the Redis bus brought: its events are delivered (in order, once, through
    /// the sequencer; a gap is filled from the store), and the engine hears whether the
    /// bus works (polling is the bus while it does not).
    pub fn on_bus(&mut self, heard: crate::bus::Heard, up: bool) {
        self.ctx.metrics.bus_events += heard.events.len() as u64;
        self.ctx.metrics.presence_changes += heard.presence.len() as u64;
        self.ctx.engine.set_bus(up);
        if let Some(cluster) = &mut self.ctx.cluster {
            if heard.came_up {
                // What was published while the subscription was down was not heard.
                cluster.reload_all();
            }
            let changed: Vec<_> =
                heard.presence.into_iter().filter_map(|e| Some(e.topic.clone()).zip(cluster.heard(e))).collect();
            for (topic, user) in changed {
                endpoints::refresh_presence(&mut self.ctx, &topic, &user);
            }
        }
        if !heard.events.is_empty() {
            self.ctx.heard(heard.events);
            self.deliver();
            self.ctx.follow_streams();
        }
        self.ctx.check_streams(heard.subscribed);
    }

    /// With Redis: what the presence lane said since the last turn. Mirrors load and
    /// their differences are told; the admissions of opening sessions are returned, for
    /// the server to hand each to its session (`admitted`).
    pub fn presence_said(&mut self) -> Vec<(ConnId, bool)> {
        let Some(cluster) = &mut self.ctx.cluster else { return Vec::new() };
        let mut admissions = Vec::new();
        let mut changed = Vec::new();
        for said in cluster.said() {
            match said {
                Said::Admitted { conn, ok } => admissions.push((conn, ok)),
                Said::Loaded { topic, ver, users } => {
                    changed.extend(cluster.loaded(&topic, ver, users).into_iter().map(|u| (topic.clone(), u)));
                }
                Said::Versions(versions) => cluster.versions(versions),
                Said::Up(up) => {
                    cluster.up = up;
                    if up {
                        cluster.reload_all();
                    }
                }
                Said::Rebuilt => {
                    self.ctx.metrics.presence_rebuilds += 1;
                    cluster.reload_all();
                }
                Said::Reaped(nodes) => self.ctx.metrics.reaped_nodes += u64::from(nodes),
            }
        }
        for (topic, user) in changed {
            endpoints::refresh_presence(&mut self.ctx, &topic, &user);
        }
        admissions
    }

    /// Looks for what other nodes stored, when it is time (a PostgreSQL node; see
    /// `Ctx::follow_streams`).
    pub fn poll(&mut self) {
        self.ctx.engine.poll(self.ctx.now);
    }

    /// Forgets rate-limit buckets that have refilled, so the map does not grow with
    /// every user ever seen. Called from the server's periodic sweep.
    pub fn sweep(&mut self) {
        // Events outlive neither their own retention nor what they report.
        let events_kept = match self.ctx.config.retention.max_age {
            Some(age) => age.min(self.ctx.config.event_retention),
            None => self.ctx.config.event_retention,
        };
        let before = self.ctx.now - events_kept.as_micros().min(i64::MAX as u128) as i64;
        self.ctx.engine.sweep(before, self.ctx.now);
        if self.ctx.config.retention.is_on() {
            self.prune_retention();
        }
        self.sweep_hooks();
        if let Some(cluster) = &mut self.ctx.cluster {
            cluster.settle(Instant::now());
        }
        let capacity = f64::from(self.ctx.config.limits.rate_limit_per_minute);
        let per_second = capacity / 60.0;
        let now = Instant::now();
        self.buckets.retain(|_, b| b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < capacity);
    }

    /// With webhooks, from the sweep: the cursor (SQLite), the unread timers, and on a
    /// cluster's node that has just started delivering, who is reported online set to
    /// the cluster's view once it is loaded (the node that delivered before may have
    /// died before it reported the last changes).
    fn sweep_hooks(&mut self) {
        let Some(webhooks) = &mut self.ctx.webhooks else { return };
        let leading = webhooks.delivery.leading();
        self.ctx.engine.sweep_hooks(&webhooks.hooks, webhooks.delivery.delivered(), leading, self.ctx.now);
        if !leading {
            webhooks.reported_online = false;
            return;
        }
        if webhooks.reported_online || !self.ctx.cluster.as_ref().is_some_and(|c| c.settled()) {
            return;
        }
        webhooks.reported_online = true;
        let online = endpoints::presence::shown(&self.ctx, crate::cluster::ONLINE).unwrap_or_default();
        let online = online.into_iter().map(|(user, name)| (user, name.to_string())).collect();
        let Some(webhooks) = &self.ctx.webhooks else { return };
        self.ctx.engine.hook_write(crate::request::Write::ReportOnline(online), &webhooks.hooks, self.ctx.now);
    }

    fn give_rate_token(&mut self, user: &UserId) {
        let capacity = f64::from(self.ctx.config.limits.rate_limit_per_minute);
        if let Some(bucket) = self.buckets.get_mut(user) {
            bucket.tokens = (bucket.tokens + 1.0).min(capacity);
        }
    }

    fn take_rate_token(&mut self, user: &UserId) -> bool {
        let capacity = f64::from(self.ctx.config.limits.rate_limit_per_minute);
        let per_second = capacity / 60.0;
        let now = Instant::now();
        let bucket = self.buckets.entry(user.clone()).or_insert(Bucket { tokens: capacity, updated: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// `?since=<seq>`: where a reconnecting client resumes its endpoint's stream. Anything
/// but a whole number closes the session with 1008, saying why.
fn since_from_query(query: Option<&str>) -> Result<Option<Seq>, Refusal> {
    let Some(value) = query.into_iter().flat_map(|q| q.split('&')).find_map(|pair| pair.strip_prefix("since=")) else {
        return Ok(None);
    };
    match http::decode_query(value).parse::<Seq>() {
        Ok(since) if since >= 0 => Ok(Some(since)),
        _ => Err(Refusal::new(
            close_code::POLICY_VIOLATION,
            "since must be a whole number (a seq from an earlier frame)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawSettings;
    use crate::store::Store;

    /// An app on an engine that answers a turn later.
    fn deferred(dir: &tempfile::TempDir) -> App {
        app_with(dir, None)
    }

    fn app_with(dir: &tempfile::TempDir, per_user: Option<&str>) -> App {
        let db = dir.path().join("t.db").to_string_lossy().into_owned();
        let (raw, _) = RawSettings::gather(&[], |name| match name {
            "SWITCHBOARD_DB" => Some(db.clone()),
            "SWITCHBOARD_JWT_SECRET" => Some("x".repeat(32)),
            "SWITCHBOARD_MAX_CONNECTIONS_PER_USER" => per_user.map(str::to_string),
            _ => None,
        })
        .unwrap();
        let config = raw.into_config().unwrap();
        let verifier = Verifier::new(&config.jwt, &"x".repeat(32)).unwrap();
        let store = Store::open(&dir.path().join("t.db"), false).unwrap();
        App::new(config, verifier, "k".repeat(16), Engine::deferred(store))
    }

    fn ident(id: &str) -> Identity {
        Identity { user_id: UserId::new(id), name: id.into() }
    }

    fn texts(outbox: &[Out], to: ConnId) -> Vec<String> {
        let mut texts = Vec::new();
        for out in outbox {
            match out {
                Out::Frame { to: tos, frame, .. } if tos.contains(&to) => texts.push(frame.to_string()),
                Out::Frames { to: t, frames } if *t == to => texts.extend(frames.iter().map(|f| f.to_string())),
                Out::Close { to: t, code, .. } if *t == to => texts.push(format!("close {code}")),
                _ => {}
            }
        }
        texts
    }

    /// An engine that answers a turn later: the session waits opening, its client's frames
    /// wait with it (in order, bounded), and it opens with exactly what the local engine
    /// would have sent, then handles them.
    #[test]
    fn an_engine_that_answers_later_keeps_the_session_opening_and_its_early_frames() {
        let dir = tempfile::tempdir().unwrap();
        let mut app = deferred(&dir);
        let (ann, bo) = (ConnId { slot: 1, serial: 1 }, ConnId { slot: 2, serial: 2 });
        let room = Endpoint::Rooms { room: "lobby".into() };

        app.begin_turn();
        let mut session = app.open(ann, room.clone(), ident("ann"), None).unwrap();
        assert!(session.opening.is_some(), "waits for its answer");
        app.on_text(&mut session, r#"{"message": "early 1"}"#);
        app.on_text(&mut session, r#"{"message": "early 2"}"#);
        assert!(app.ctx.online.is_empty(), "not online before it opened");
        assert!(texts(&app.end_turn(), ann).is_empty(), "nothing sent while opening");

        app.begin_turn();
        for (conn, answer) in app.ready_opens() {
            assert_eq!(conn, ann);
            app.finish_open(&mut session, answer);
        }
        let sent = texts(&app.end_turn(), ann);
        assert!(sent[0].contains("room_users_list"), "{sent:?}");
        assert_eq!(sent.len(), 1, "its early frames are asked of the engine: {sent:?}");
        assert!(app.ctx.online.contains_key(&UserId::new("ann")));

        // Their answers come a turn later, in order; what they stored reaches the room.
        app.begin_turn();
        assert!(app.ctx.engine.pending());
        for (then, answer, write) in app.ready_answers() {
            assert!(write && answer.is_ok());
            app.answer_later(Some(&session), then, answer, write);
        }
        let sent = texts(&app.end_turn(), ann);
        assert!(sent[0].contains("early 1") && sent[0].contains("\"seq\":1"), "{sent:?}");
        assert!(sent[1].contains("early 2") && sent[1].contains("\"seq\":2"), "{sent:?}");
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(!app.ctx.engine.pending());

        // A failed write is rendered on its session when its answer comes.
        app.begin_turn();
        app.on_text(&mut session, r#"{"message": "   "}"#);
        assert!(texts(&app.end_turn(), ann).is_empty());
        app.begin_turn();
        for (then, answer, write) in app.ready_answers() {
            app.answer_later(Some(&session), then, answer, write);
        }
        assert_eq!(texts(&app.end_turn(), ann), [r#"{"error":"Message is empty."}"#]);

        // Too much before the answer closes the connection; a refused answer closes it too,
        // and it never counts as opened.
        app.begin_turn();
        let mut flooder = app.open(bo, room, ident("bo"), None).unwrap();
        for _ in 0..=crate::context::MAX_EARLY_FRAMES {
            app.on_text(&mut flooder, r#"{"message": "x"}"#);
        }
        assert_eq!(texts(&app.end_turn(), bo), ["close 1008"]);
        app.close(flooder);
        let carl = ConnId { slot: 3, serial: 3 };
        app.begin_turn();
        let mut outsider = app.open(carl, Endpoint::Consultation { id: "c9".into() }, ident("carl"), None).unwrap();
        for (conn, answer) in app.ready_opens() {
            if conn == carl {
                app.finish_open(&mut outsider, answer);
            }
        }
        assert_eq!(texts(&app.end_turn(), carl), ["close 4003"]);
        app.close(outsider);
        assert_eq!(app.ctx.online.len(), 1);
    }

    /// Sessions waiting for their answer count toward the per-user cap; one that closes
    /// or is refused meanwhile stops counting.
    #[test]
    fn opening_sessions_count_toward_the_per_user_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut app = app_with(&dir, Some("2"));
        let room = Endpoint::Rooms { room: "lobby".into() };
        let conn = |n| ConnId { slot: n, serial: n as u64 };
        app.begin_turn();
        let first = app.open(conn(1), room.clone(), ident("ann"), None).unwrap();
        let mut second = app.open(conn(2), room.clone(), ident("ann"), None).unwrap();
        let refused = app.open(conn(3), room.clone(), ident("ann"), None).err().map(|r| r.code);
        assert_eq!(refused, Some(close_code::TRY_AGAIN_LATER), "two are opening already");
        app.close(first);
        let mut third = app.open(conn(4), room.clone(), ident("ann"), None).unwrap();
        let mut outsider = app.open(conn(5), Endpoint::Consultation { id: "none".into() }, ident("bo"), None).unwrap();
        app.end_turn();

        app.begin_turn();
        for (c, answer) in app.ready_opens() {
            match c.slot {
                2 => app.finish_open(&mut second, answer),
                4 => app.finish_open(&mut third, answer),
                5 => app.finish_open(&mut outsider, answer),
                // Closed before its answer: the server finds no session for it.
                _ => assert_eq!(c.slot, 1),
            }
        }
        app.close(outsider);
        assert!(app.opening.is_empty(), "{:?}", app.opening);
        assert_eq!(app.ctx.user_conns(&UserId::new("ann")).len(), 2);
        assert!(app.open(conn(6), room, ident("ann"), None).is_err(), "two are open");
    }
}

//! The SQL shared by [`SqliteStore`](super::SqliteStore) and
//! [`PostgresStore`](super::PostgresStore): the schema and one text per
//! operation, written once with `$n` parameters and rendered for each
//! dialect, and the parts of the [`SessionStore`](crate::SessionStore)
//! implementation that are the same on both.
//!
//! Every write but the capped insert is a single conditional statement, so
//! it is atomic on both databases and a lost race changes nothing: `UPDATE
//! … WHERE id = $1 AND generation = $2 AND revoked_at IS NULL …` is the
//! compare-and-swap. The capped insert counts the subject's sessions, which
//! a concurrent login could add to after the statement's snapshot, so it is
//! a transaction that first serializes the subject's logins (SQLite: `BEGIN
//! IMMEDIATE`, the database's write lock; PostgreSQL: an advisory lock on
//! the subject), then revokes and inserts.
//!
//! No lookup key may be held twice, in any slot of any record. SQLite keeps
//! a record in one row, its three lookup keys in columns of their own, each
//! with a unique index; across columns, its writes check the other columns
//! in the same statement (a write statement holds the database's write lock
//! from before it reads, so the check cannot race). PostgreSQL, whose
//! concurrent statements can race, keeps a row per slot (`slot` 0
//! current, 1 previous, 2 superseded) whose primary key is the slot's
//! lookup key and so refuses a second holder (a slot without a key holds a
//! 17-byte placeholder, never a lookup key). A row that holds a key holds
//! the whole record (a `record` column in [`value`](super::value)'s
//! encoding, and the columns its statements select by); the others are
//! written with an empty `record` (which reads as corrupt) and otherwise left
//! alone (a row emptied before this rule may keep a stale copy, which no
//! statement reads). The three rows are inserted
//! together and never deleted apart, so a revocation (which updates every
//! row of the id) never misses one. A write is one statement that updates
//! the rows holding a key before or after it, and no other: a data write to
//! a session with one key changes one row. Its compare-and-swap is on slot
//! 0's row, whose record's header line (which names every key) must be the
//! caller's byte for byte, so the rows holding a key before are the ones the
//! caller names; the other rows it writes follow only if that applied
//! (`WITH head AS (UPDATE … slot = 0 …) … WHERE EXISTS (SELECT 1 FROM
//! head)`): every write locks slot 0's row first, so no other write changes
//! them in between. A write and a statement that locks every row of a record
//! (a revocation, a purge, an eviction) can lock rows in different orders
//! and deadlock; PostgreSQL then rolls one back and the store runs it
//! again. A rotation moves keys between rows, so the primary key is
//! checked at the end of each statement. Statements about whole records (by
//! subject, counts, purges) read the current slot's row; only rows holding
//! a key are ever looked up, and they are written by every write, so their
//! columns are always the record's.
//!
//! Every lookup is one `IN` list per index, never an `OR` across lookup-key
//! columns: on SQLite a `UNION ALL` of single-column `IN` lists, on
//! PostgreSQL one `IN` list on the primary key, which returns the record
//! with the slot that matched in one probe per key. One parameter per
//! lookup key, so PostgreSQL's cached generic plan is the same index scan as
//! a custom one and is reused rather than re-planned (an array parameter,
//! `= ANY($1)`, is estimated at ten elements in a generic plan, which then
//! looks dearer than a custom plan and is never chosen).

use sqlx::Row;

use crate::store::StoreError;
use crate::store::raw::{RawRecord, session_id};

/// The SQL dialect to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Sqlite,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres,
}

/// How a column's values are stored and bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bytes,
    Int,
    /// SQLite: integer microseconds since the Unix epoch; PostgreSQL:
    /// `TIMESTAMPTZ` (microsecond precision).
    Time,
    Text,
    /// SQLite: `0` or `1`; PostgreSQL: `BOOLEAN`.
    Bool,
    /// SQLite: JSON text; PostgreSQL: `JSONB`.
    Json,
}

/// One column of the sessions table.
struct Column {
    name: &'static str,
    kind: Kind,
    nullable: bool,
    /// Whether [`SessionStore::replace`](crate::SessionStore::replace)
    /// writes it (`id`, `subject`, `created_at` and `absolute_expires_at`
    /// never change).
    mutable: bool,
}

const fn column(name: &'static str, kind: Kind, nullable: bool, mutable: bool) -> Column {
    Column {
        name,
        kind,
        nullable,
        mutable,
    }
}

/// The columns, in the order of [`values`] and of every `SELECT`.
const COLUMNS: [Column; 25] = {
    use Kind::*;
    [
        column("id", Bytes, false, false),
        column("generation", Int, false, true),
        column("subject", Text, true, false),
        column("created_at", Time, false, false),
        column("authenticated_at", Time, true, true),
        column("last_seen_at", Time, false, true),
        column("expires_at", Time, false, true),
        column("absolute_expires_at", Time, false, false),
        column("idle_timeout_secs", Int, false, true),
        column("persistent", Bool, false, true),
        column("access_expires_at", Time, false, true),
        column("current_lookup_key", Bytes, false, true),
        column("current_key_version", Int, false, true),
        column("previous_lookup_key", Bytes, true, true),
        column("previous_key_version", Int, true, true),
        column("previous_rotated_at", Time, true, true),
        column("previous_valid_until", Time, true, true),
        column("superseded_lookup_key", Bytes, true, true),
        column("superseded_key_version", Int, true, true),
        column("revoked_at", Time, true, true),
        column("revoked_reason", Text, true, true),
        column("revoked_actor", Text, true, true),
        column("user_agent", Text, true, true),
        column("client_ip", Text, true, true),
        column("data", Json, false, true),
    ]
};

/// The columns holding lookup keys, in [`Slot`](crate::Slot) order: a
/// lookup reports the position of the column that matched.
const LOOKUP_KEY_COLUMNS: [&str; 3] = [
    "current_lookup_key",
    "previous_lookup_key",
    "superseded_lookup_key",
];

/// SQLite: the positions (1-based, as `$n`) of the lookup keys among the
/// insert's parameters, which follow [`COLUMNS`].
const INSERT_KEY_PARAMS: [usize; 3] = [12, 14, 18];

/// The columns of [`COLUMNS`] PostgreSQL keeps beside the whole record
/// (schema version 3): those its statements filter, order, count or revoke
/// by. The record itself is one `record` column in the encoding of
/// [`value`](super::value), which is all a read returns: one column to send
/// and decode rather than twenty-six.
const POSTGRES_COLUMNS: [&str; 13] = [
    "id",
    "generation",
    "subject",
    "created_at",
    "last_seen_at",
    "expires_at",
    "absolute_expires_at",
    "current_key_version",
    "previous_key_version",
    "previous_valid_until",
    "revoked_at",
    "revoked_reason",
    "revoked_actor",
];

/// Whether `dialect`'s table has `column`.
fn stored(dialect: Dialect, column: &Column) -> bool {
    match dialect {
        Dialect::Sqlite => true,
        Dialect::Postgres => POSTGRES_COLUMNS.contains(&column.name),
    }
}

/// The most distinct lookup keys one lookup binds with a prepared text;
/// more get a text of their own, rendered per call.
const PREPARED_LOOKUPS: usize = crate::keys::MAX_COOKIE_VALUES * crate::keys::MAX_KEY_VERSIONS;

/// One value to bind. Deliberately not `Debug`: it holds lookup keys.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    Bytes(Option<&'a [u8]>),
    Int(Option<i64>),
    /// Microseconds since the Unix epoch.
    Time(Option<i64>),
    Text(Option<&'a str>),
    Bool(bool),
    Json(&'a str),
}

/// The values of `raw` in [`COLUMNS`] order.
fn values(raw: &RawRecord) -> [Value<'_>; 25] {
    use Value::*;
    [
        Bytes(Some(&raw.id)),
        Int(Some(raw.generation)),
        Text(raw.subject.as_deref()),
        Time(raw.created_at),
        Time(raw.authenticated_at),
        Time(raw.last_seen_at),
        Time(raw.expires_at),
        Time(raw.absolute_expires_at),
        Int(Some(raw.idle_timeout_secs)),
        Bool(raw.persistent != 0),
        Time(raw.access_expires_at),
        Bytes(Some(&raw.current_lookup_key)),
        Int(Some(raw.current_key_version)),
        Bytes(raw.previous_lookup_key.as_deref()),
        Int(raw.previous_key_version),
        Time(raw.previous_rotated_at),
        Time(raw.previous_valid_until),
        Bytes(raw.superseded_lookup_key.as_deref()),
        Int(raw.superseded_key_version),
        Time(raw.revoked_at),
        Text(raw.revoked_reason.as_deref()),
        Text(raw.revoked_actor.as_deref()),
        Text(raw.user_agent.as_deref()),
        Text(raw.client_ip.as_deref()),
        Json(&raw.data),
    ]
}

/// The values an insert binds: the dialect's columns, in [`COLUMNS`] order;
/// PostgreSQL: then the three lookup keys (each slot's row is keyed by its
/// own) and the whole record, `record` ([`value`](super::value)'s
/// encoding).
pub(crate) fn insert_values<'a>(
    dialect: Dialect,
    raw: &'a RawRecord,
    record: &'a [u8],
) -> Vec<Value<'a>> {
    let mut bound: Vec<_> = COLUMNS
        .iter()
        .zip(values(raw))
        .filter(|(c, _)| stored(dialect, c))
        .map(|(_, v)| v)
        .collect();
    if dialect == Dialect::Postgres {
        bound.extend(lookup_keys(raw).map(Value::Bytes));
        bound.push(Value::Bytes(Some(record)));
    }
    bound
}

/// The values a replace binds after its leading parameters: SQLite, the
/// mutable columns, in [`COLUMNS`] order; PostgreSQL, the three lookup keys
/// and `record` first, then its mutable columns, then the columns that
/// never change (`subject`, `created_at`, `absolute_expires_at`), which the
/// update requires to be as stored: `record` is written whole, so it never
/// disagrees with them (Redis compares the whole header the same way).
pub(crate) fn mutable_values<'a>(
    dialect: Dialect,
    raw: &'a RawRecord,
    record: &'a [u8],
) -> Vec<Value<'a>> {
    let mut bound = Vec::with_capacity(COLUMNS.len());
    if dialect == Dialect::Postgres {
        bound.extend(lookup_keys(raw).map(Value::Bytes));
        bound.push(Value::Bytes(Some(record)));
    }
    bound.extend(
        COLUMNS
            .iter()
            .zip(values(raw))
            .filter(|(c, _)| c.mutable && stored(dialect, c))
            .map(|(_, v)| v),
    );
    if dialect == Dialect::Postgres {
        bound.extend([
            Value::Text(raw.subject.as_deref()),
            Value::Time(raw.created_at),
            Value::Time(raw.absolute_expires_at),
        ]);
    }
    bound
}

/// Every lookup key `next` holds (`None` for an empty slot, so there are
/// always three to bind): a replace checks each of them against the other
/// records (SQLite), whatever the caller says `current` holds, so a stale or
/// mistaken `current` can never let a key get a second holder.
pub(crate) fn lookup_keys(next: &RawRecord) -> [Option<&[u8]>; 3] {
    [
        Some(next.current_lookup_key.as_slice()),
        next.previous_lookup_key.as_deref(),
        next.superseded_lookup_key.as_deref(),
    ]
}

/// How many records one purge statement deletes at most: SQLite's write
/// lock and a PostgreSQL transaction stay short however much there is to
/// purge.
pub(crate) const PURGE_BATCH: i64 = 1000;

/// The sessions table.
const TABLE: &str = "tower_hmac_session_records";
/// PostgreSQL only: every lookup key held, with its record's id.
const LOOKUP_KEYS_TABLE: &str = "tower_hmac_session_lookup_keys";

/// The rendered statements of one store.
#[derive(Debug)]
pub(crate) struct Queries {
    pub(crate) dialect: Dialect,
    table: String,
    /// What a statement returning records selects: SQLite, every column of
    /// [`COLUMNS`]; PostgreSQL, `record`.
    select_list: String,
    pub(crate) migrations_table: String,
    /// `(version, statements)`, applied in order, each once.
    pub(crate) migrations: Vec<(i64, String)>,
    /// `find_active[n - 1]` looks up `n` keys; see [`Self::find_active`].
    find_active: Vec<String>,
    /// `$1` id, `$2` now.
    pub(crate) get_active: String,
    /// [`insert_values`]. SQLite: inserts nothing if a lookup key of the
    /// record is in any lookup-key column; PostgreSQL: three rows, one per
    /// slot, keyed by the slot's lookup key (whose primary key refuses a key
    /// another record holds) or its placeholder.
    pub(crate) insert: String,
    /// `$1` id, `$2` expected generation, `$3` now, then
    /// [`mutable_values`]; SQLite: `$4` … `$6` the replacement's lookup keys
    /// (or null) first (the update does not apply on a clash: then ask
    /// [`Self::clash`]); PostgreSQL: `$20` the header line of the record
    /// the caller read; a clash is a unique violation; it updates the
    /// current slot's row only, for a record that holds no other key before
    /// or after (else [`Self::replace_rows`]).
    pub(crate) replace: String,
    /// PostgreSQL: [`Self::replace`]'s parameters, then `$21` and `$22`,
    /// slot 1 and 2 or null: the other rows to write (those that hold a
    /// key before or after), only if slot 0's row was. Returns how many
    /// rows of slot 0 and of the others it updated.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) replace_rows: String,
    /// SQLite, after a replace that did not apply, with its first six
    /// parameters: whether the compare-and-swap's condition holds and
    /// another record holds one of the replacement's keys (a conflict), rather than
    /// the condition failing (not applied, whatever the keys).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) clash: String,
    /// `$1` id, `$2` now, `$3` reason, `$4` actor, `$5` subject (or null).
    /// PostgreSQL: returns `(found, revoked)`; SQLite: a plain update, then
    /// [`Self::exists`].
    pub(crate) revoke: String,
    /// `$1` id, `$2` subject (or null).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) exists: String,
    /// `$1` subject, `$2` now, `$3` reason, `$4` actor, `$5` except.
    /// PostgreSQL: returns how many records it revoked; SQLite: a plain
    /// update.
    pub(crate) revoke_all: String,
    /// `$1` subject, `$2` now.
    pub(crate) list: String,
    /// `$1` now, `$2` seen since: `(key_version, recent, dormant)` rows.
    pub(crate) count: String,
    /// `$1` now, `$2` batch size: deletes at most that many records that
    /// are expired or revoked. Idle expiry alone decides "expired":
    /// [`SessionRecord::validate`](crate::SessionRecord::validate) keeps
    /// `expires_at` at or before `absolute_expires_at`. PostgreSQL: returns
    /// how many records it deleted; SQLite: a plain delete.
    pub(crate) purge: String,
    /// SQLite, inside the capped insert's transaction: `$1` subject, `$2`
    /// now, `$3` reason, `$4` actor, `$5` except (or null), `$6` how many
    /// live sessions to keep. Revokes the others, least recently used
    /// first, returning `(id, last_seen_at, created_at)`.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) evict: String,
    /// PostgreSQL, inside a transaction holding the subject's advisory
    /// lock: [`insert_values`] as for [`Self::insert`], then now, reason,
    /// actor, except (or null) and how many live sessions to keep. Revokes
    /// the others and inserts, in one statement; returns the revoked ids,
    /// least recently used first.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) insert_capped: String,
    /// PostgreSQL, upgrading to version 3 (see [`RECORD_COLUMN`]): `$1` the
    /// id to start after, `$2` how many records; each row's `id`, then every
    /// column of version 2 as [`raw_from_row`] reads them.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fill_select: String,
    /// PostgreSQL, upgrading to version 3: `$1` ids, `$2` their records, as
    /// arrays; sets `record` on each of their rows.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fill_update: String,
    /// PostgreSQL, upgrading to version 3, after the batches: an empty
    /// (corrupt) `record` for rows none reached.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fill_rest: String,
    /// PostgreSQL, upgrading to version 3, after every record is filled in:
    /// `record` becomes `NOT NULL` and the columns it replaces are dropped.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fill_finish: String,
}

/// The ids of `subject`'s sessions active at `now`, other than `except`,
/// beyond the `keep` most recently used (`last_seen_at`, then
/// `created_at`, then id, descending): those a capped insert revokes. One
/// range of the subject index.
fn evict_ids(table: &str, subject: &str, now: &str, except: &str, keep: &str, one: &str) -> String {
    format!(
        "SELECT id FROM (SELECT id, row_number() OVER \
         (ORDER BY last_seen_at DESC, created_at DESC, id DESC) AS n \
         FROM {table} WHERE subject = {subject}{one} AND {active} \
         AND ({except} IS NULL OR id <> {except})) AS ranked WHERE n > {keep}",
        active = active(now)
    )
}

/// PostgreSQL: the lookup key of `slot`'s row when the record holds no key
/// there: the record's 16-byte id and the slot number, 17 bytes, so never a
/// 32-byte lookup key (a lookup never finds it) and never another record's.
fn placeholder(key: &str, id: &str, slot: u8) -> String {
    format!("coalesce({key}, {id} || '\\x0{slot}'::bytea)")
}

/// `revoked_at IS NULL AND expires_at > {now} AND absolute_expires_at > {now}`.
fn active(now: &str) -> String {
    format!("revoked_at IS NULL AND expires_at > {now} AND absolute_expires_at > {now}")
}

impl Queries {
    /// Renders every statement of `dialect`, for the tables in `schema`
    /// (PostgreSQL; SQLite has none).
    pub(crate) fn new(dialect: Dialect, schema: Option<&str>) -> Self {
        let qualified = |name: &str| match schema {
            Some(schema) => format!("\"{schema}\".{name}"),
            None => name.to_owned(),
        };
        let table = &qualified(TABLE);
        // Every column of the record (PostgreSQL: as in version 2, which
        // the upgrade to version 3 reads).
        let wide_select_list = COLUMNS
            .iter()
            .map(|c| match (dialect, c.kind) {
                (Dialect::Postgres, Kind::Json) => format!("{0}::text AS {0}", c.name),
                _ => c.name.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let select_list = match dialect {
            Dialect::Sqlite => wide_select_list.clone(),
            Dialect::Postgres => "record".to_owned(),
        };
        let stored_columns: Vec<&Column> = COLUMNS.iter().filter(|c| stored(dialect, c)).collect();
        let param = |i: usize, kind: Kind| match (dialect, kind) {
            (Dialect::Postgres, Kind::Json) => format!("${i}::jsonb"),
            _ => format!("${i}"),
        };
        // Whether another record (than `except`) holds one of `keys`: one
        // index lookup per lookup-key column.
        let clash = |keys: &str, except: Option<&str>| {
            let except = except
                .map(|id| format!(" AND id <> {id}"))
                .unwrap_or_default();
            LOOKUP_KEY_COLUMNS
                .map(|column| {
                    format!("EXISTS (SELECT 1 FROM {table} WHERE {column} IN ({keys}){except})")
                })
                .join(" OR ")
        };
        let insert_keys = INSERT_KEY_PARAMS.map(|i| format!("${i}")).join(", ");
        // PostgreSQL: the insert's lookup keys and `record` follow its
        // columns.
        let n = stored_columns.len();
        let key_params = [n + 1, n + 2, n + 3];
        let record_param = n + 4;
        // PostgreSQL holds a record once per lookup key (see the module
        // docs); its record-wide statements read the current key's row.
        let one = match dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " AND slot = 0",
        };
        let key_rows = |params: [usize; 3]| {
            let [current, previous, superseded] = params;
            format!(
                "(VALUES (${current}::bytea, 0, true), ({}, 1, ${previous}::bytea IS NOT NULL), \
                 ({}, 2, ${superseded}::bytea IS NOT NULL)) AS k (lookup_key, slot, held)",
                placeholder(&format!("${previous}::bytea"), "$1", 1),
                placeholder(&format!("${superseded}::bytea"), "$1", 2),
            )
        };
        // PostgreSQL: a row holds the record only while it holds a key; an
        // empty `record` (which reads as corrupt) in the others.
        let row_record = format!("CASE WHEN k.held THEN ${record_param} ELSE ''::bytea END");
        let columns = stored_columns
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ");
        let insert_params = stored_columns
            .iter()
            .enumerate()
            .map(|(i, c)| param(i + 1, c.kind))
            .collect::<Vec<_>>()
            .join(", ");
        // After `$1` … `$3`: SQLite's three keys to check for a clash,
        // PostgreSQL's three keys and `record`.
        let first_mutable = match dialect {
            Dialect::Sqlite => 7,
            Dialect::Postgres => 8,
        };
        let replace_set = stored_columns
            .iter()
            .filter(|c| c.mutable)
            .enumerate()
            .map(|(i, c)| format!("{} = {}", c.name, param(first_mutable + i, c.kind)))
            .collect::<Vec<_>>()
            .join(", ");
        let replace_update = format!(
            "UPDATE {table} SET {replace_set} WHERE id = $1 AND generation = $2 AND {}",
            active("$3")
        );

        // PostgreSQL: the compare-and-swap on the current slot's row, which
        // also requires the columns that never change to be as the caller
        // read them (after the mutable columns' parameters), and the stored
        // record's header line to be the caller's byte for byte (`$20`; it
        // holds every key, so the rows the write changes are the ones that
        // hold a key): `record` is written whole, so it never disagrees with
        // them (Redis compares the whole header the same way).
        let pg_replace_head = {
            let next = first_mutable + stored_columns.iter().filter(|c| c.mutable).count();
            format!(
                "UPDATE {table} SET lookup_key = $4::bytea, record = $7, {replace_set} \
                 WHERE id = $1 AND slot = 0 AND generation = $2 AND {} \
                 AND subject IS NOT DISTINCT FROM ${} AND created_at = ${} \
                 AND absolute_expires_at = ${} \
                 AND substring(record FROM 1 FOR octet_length(${header}::bytea)) = ${header}::bytea",
                active("$3"),
                next,
                next + 1,
                next + 2,
                header = next + 3,
            )
        };

        let revoke_set = "revoked_at = $2, revoked_reason = $3, revoked_actor = $4";
        let subject_matches = |p: &str| format!("({p} IS NULL OR subject = {p})");
        let revoke_update = format!(
            "UPDATE {table} SET {revoke_set} WHERE id = $1 AND revoked_at IS NULL AND {}",
            subject_matches("$5")
        );
        let render = |sql: String| match dialect {
            // SQLite numbers its parameters `?NNN`.
            Dialect::Sqlite => sql.replace('$', "?"),
            Dialect::Postgres => sql,
        };
        let mut queries = Self {
            dialect,
            table: table.to_owned(),
            select_list: select_list.clone(),
            migrations_table: qualified(&format!("{TABLE}_migrations")),
            migrations: migrations(dialect, schema)
                .into_iter()
                .map(|(v, sql)| (v, render(sql)))
                .collect(),
            find_active: Vec::new(),
            get_active: render(format!(
                "SELECT {select_list} FROM {table} WHERE id = $1{one} AND {}",
                active("$2")
            )),
            insert: render(match dialect {
                Dialect::Sqlite => format!(
                    "INSERT INTO {table} ({columns}) SELECT {insert_params} WHERE NOT ({})",
                    clash(&insert_keys, None)
                ),
                Dialect::Postgres => format!(
                    "INSERT INTO {table} (lookup_key, slot, {columns}, record) \
                     SELECT k.lookup_key, k.slot, {insert_params}, {row_record} FROM {}",
                    key_rows(key_params)
                ),
            }),
            replace: render(match dialect {
                Dialect::Sqlite => format!(
                    "{replace_update} AND NOT ({})",
                    clash("$4, $5, $6", Some("$1"))
                ),
                // The current slot's row alone: the replacement and the
                // stored record hold no other key (`$5` and `$6` null).
                Dialect::Postgres => {
                    format!("{pg_replace_head} AND $5::bytea IS NULL AND $6::bytea IS NULL")
                }
            }),
            replace_rows: match dialect {
                Dialect::Sqlite => String::new(),
                // The other rows follow only if slot 0's compare-and-swap
                // applied: every replace locks slot 0's row first, so no
                // other replace changes them in between (see the module
                // docs).
                Dialect::Postgres => format!(
                    "WITH head AS ({pg_replace_head} RETURNING 1), \
                     rest AS (UPDATE {table} SET lookup_key = CASE slot WHEN 1 THEN {} ELSE {} END, \
                     record = CASE WHEN (CASE slot WHEN 1 THEN $5::bytea ELSE $6::bytea END) \
                     IS NULL THEN ''::bytea ELSE $7 END, {replace_set} \
                     WHERE id = $1 AND slot IN ($21, $22) AND EXISTS (SELECT 1 FROM head) \
                     RETURNING 1) \
                     SELECT (SELECT count(*) FROM head), (SELECT count(*) FROM rest)",
                    placeholder("$5::bytea", "id", 1),
                    placeholder("$6::bytea", "id", 2),
                ),
            },
            clash: render(format!(
                "SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1 AND generation = $2 AND {}) \
                 AND ({})",
                active("$3"),
                clash("$4, $5, $6", Some("$1"))
            )),
            revoke: render(match dialect {
                Dialect::Sqlite => revoke_update,
                Dialect::Postgres => format!(
                    "WITH updated AS ({revoke_update} RETURNING 1) \
                     SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1 AND {}), \
                     EXISTS (SELECT 1 FROM updated)",
                    subject_matches("$5")
                ),
            }),
            exists: render(format!(
                "SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1 AND {})",
                subject_matches("$2")
            )),
            revoke_all: render({
                let update = format!(
                    "UPDATE {table} SET {revoke_set} WHERE subject = $1 AND {} \
                     AND ($5 IS NULL OR id <> $5)",
                    active("$2")
                );
                match dialect {
                    Dialect::Sqlite => update,
                    // The subject's records by slot 0's row, then all
                    // three rows of each.
                    Dialect::Postgres => format!(
                        "WITH revoked AS (UPDATE {table} SET {revoke_set} WHERE id IN (\
                         SELECT id FROM {table} WHERE subject = $1 AND slot = 0 AND {} \
                         AND ($5 IS NULL OR id <> $5)) AND revoked_at IS NULL RETURNING slot) \
                         SELECT count(*) FROM revoked WHERE slot = 0",
                        active("$2")
                    ),
                }
            }),
            list: render(format!(
                "SELECT {select_list} FROM {table} WHERE subject = $1{one} AND {} \
                 ORDER BY created_at DESC, id ASC",
                active("$2")
            )),
            count: render(format!(
                "SELECT key_version, \
                 SUM(CASE WHEN last_seen_at >= $2 THEN 1 ELSE 0 END), \
                 SUM(CASE WHEN last_seen_at >= $2 THEN 0 ELSE 1 END) FROM (\
                 SELECT current_key_version AS key_version, last_seen_at FROM {table} \
                 WHERE {active}{one} \
                 UNION ALL \
                 SELECT previous_key_version, last_seen_at FROM {table} WHERE {active}{one} \
                 AND previous_key_version <> current_key_version \
                 AND (previous_valid_until IS NULL OR previous_valid_until > $1)\
                 ) AS versions GROUP BY key_version ORDER BY key_version",
                active = active("$1")
            )),
            // Two index range scans, disjoint so that the batch's size is
            // the number deleted: expired, then revoked but not expired.
            // (SQLite's `+` keeps it from ranging over the live records'
            // expiry rather than the revoked ones.)
            purge: render({
                let delete = format!(
                    "DELETE FROM {table} WHERE id IN (\
                     SELECT id FROM {table} WHERE expires_at <= $1{one} \
                     UNION ALL \
                     SELECT id FROM {table} WHERE revoked_at IS NOT NULL \
                     AND {not_indexed}expires_at > $1{one} \
                     LIMIT $2)",
                    not_indexed = match dialect {
                        Dialect::Sqlite => "+",
                        Dialect::Postgres => "",
                    },
                );
                match dialect {
                    Dialect::Sqlite => delete,
                    Dialect::Postgres => format!(
                        "WITH purged AS ({delete} RETURNING slot) \
                         SELECT count(*) FROM purged WHERE slot = 0"
                    ),
                }
            }),
            evict: render(format!(
                "UPDATE {table} SET {revoke_set} WHERE id IN ({ranked}) AND revoked_at IS NULL \
                 RETURNING id, last_seen_at, created_at",
                ranked = evict_ids(table, "$1", "$2", "$5", "$6", one),
            )),
            insert_capped: render({
                // After the insert's parameters: now, reason, actor, except,
                // how many to keep.
                let [now, reason, actor, except, keep] =
                    [1, 2, 3, 4, 5].map(|i| format!("${}", record_param + i));
                format!(
                    "WITH evicted AS (\
                     UPDATE {table} SET revoked_at = {now}, revoked_reason = {reason}, \
                     revoked_actor = {actor} \
                     WHERE id IN ({ranked}) AND revoked_at IS NULL \
                     RETURNING id, slot, last_seen_at, created_at), \
                     inserted AS (INSERT INTO {table} (lookup_key, slot, {columns}, record) \
                     SELECT k.lookup_key, k.slot, {insert_params}, {row_record} \
                     FROM {keys} RETURNING 1) \
                     SELECT evicted.id FROM evicted \
                     WHERE evicted.slot = 0 AND EXISTS (SELECT 1 FROM inserted) \
                     ORDER BY evicted.last_seen_at, evicted.created_at, evicted.id",
                    ranked = evict_ids(table, "$3", &now, &except, &keep, one),
                    keys = key_rows(key_params),
                )
            }),
            fill_select: format!(
                "SELECT id, {wide_select_list} FROM {table} WHERE slot = 0 AND id > $1 \
                 ORDER BY id LIMIT $2"
            ),
            fill_update: format!(
                "UPDATE {table} SET record = v.record \
                 FROM unnest($1::bytea[], $2::bytea[]) AS v (id, record) WHERE {table}.id = v.id"
            ),
            fill_rest: format!("UPDATE {table} SET record = '' WHERE record IS NULL"),
            fill_finish: {
                let dropped = COLUMNS
                    .iter()
                    .filter(|c| !stored(Dialect::Postgres, c))
                    .map(|c| format!(", DROP COLUMN {}", c.name))
                    .collect::<String>();
                format!("ALTER TABLE {table} ALTER COLUMN record SET NOT NULL{dropped}")
            },
        };
        queries.find_active = (1..=PREPARED_LOOKUPS)
            .map(|n| queries.render_find_active(n))
            .collect();
        queries
    }

    /// The one-statement lookup of `n` distinct lookup keys, `$1` … `$n`,
    /// at time `$n+1`. Each row starts with `slot`, the position in
    /// [`LOOKUP_KEY_COLUMNS`] of the column that matched.
    ///
    /// PostgreSQL: one probe of the primary key per key, which finds the
    /// row of the slot holding it (the row's `slot`), with no join: a plan
    /// the server caches and reuses (`IN` over scalar parameters, no `OR`
    /// across columns). SQLite: one `SELECT` per lookup-key column, each an
    /// index lookup, joined by `UNION ALL`.
    pub(crate) fn find_active(&self, n: usize) -> std::borrow::Cow<'_, str> {
        match self.find_active.get(n.wrapping_sub(1)) {
            Some(sql) => sql.as_str().into(),
            None => self.render_find_active(n).into(),
        }
    }

    fn render_find_active(&self, n: usize) -> String {
        match self.dialect {
            Dialect::Postgres => {
                let keys = (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>();
                format!(
                    "SELECT slot, {} FROM {} WHERE lookup_key IN ({}) AND {}",
                    self.select_list,
                    self.table,
                    keys.join(", "),
                    active(&format!("${}", n + 1)),
                )
            }
            Dialect::Sqlite => {
                let keys = (1..=n)
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let now = format!("?{}", n + 1);
                LOOKUP_KEY_COLUMNS
                    .iter()
                    .enumerate()
                    .map(|(slot, column)| {
                        format!(
                            "SELECT {slot} AS slot, {} FROM {} WHERE {column} IN ({keys}) AND {}",
                            self.select_list,
                            self.table,
                            active(&now)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ")
            }
        }
    }
}

/// The versioned schema. Each entry is applied once, in order, inside the
/// migration transaction, so a failed one leaves nothing behind.
///
/// Version 1 gives each lookup-key column a unique index: a lookup is an
/// index probe per key and column, and two records can never hold one key
/// in the same column (SQLite's layout to this day). PostgreSQL's version 2
/// replaces them with a row per slot keyed by its lookup key; see the module
/// docs.
fn migrations(dialect: Dialect, schema: Option<&str>) -> Vec<(i64, String)> {
    let qualified = |name: &str| match schema {
        Some(schema) => format!("\"{schema}\".{name}"),
        None => name.to_owned(),
    };
    let table = qualified(TABLE);
    let (suffix, sql_type): (&str, fn(Kind) -> &'static str) = match dialect {
        Dialect::Sqlite => (" STRICT, WITHOUT ROWID", |kind| match kind {
            Kind::Bytes => "BLOB",
            Kind::Int | Kind::Time | Kind::Bool => "INTEGER",
            Kind::Text | Kind::Json => "TEXT",
        }),
        // Version 1 kept pages 30% free (its text never changes: a fixture
        // pins it); version 4 sets the fillfactor of now (see [`FILLFACTOR`]).
        Dialect::Postgres => (" WITH (fillfactor = 70)", |kind| match kind {
            Kind::Bytes => "BYTEA",
            Kind::Int => "BIGINT",
            Kind::Time => "TIMESTAMPTZ",
            Kind::Text => "TEXT",
            Kind::Bool => "BOOLEAN",
            Kind::Json => "JSONB",
        }),
    };
    let columns = COLUMNS
        .iter()
        .map(|c| {
            let constraint = match (c.name, c.nullable) {
                ("id", _) => " NOT NULL PRIMARY KEY",
                (_, false) => " NOT NULL",
                (_, true) => "",
            };
            format!("{} {}{constraint}", c.name, sql_type(c.kind))
        })
        .collect::<Vec<_>>()
        .join(", ");
    // Index names are local to a schema (PostgreSQL) or a database (SQLite).
    let index = |name: &str| format!("{TABLE}_{name}");
    let unique_keys: String = LOOKUP_KEY_COLUMNS
        .iter()
        .map(|column| {
            format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {table} ({column});\n",
                index(column)
            )
        })
        .collect();
    let mut schema_sql = format!(
        "CREATE TABLE IF NOT EXISTS {table} ({columns}){suffix};\n\
         {unique_keys}\
         CREATE INDEX IF NOT EXISTS {subject} ON {table} (subject, created_at DESC) \
         WHERE subject IS NOT NULL;\n\
         CREATE INDEX IF NOT EXISTS {expires} ON {table} (expires_at);\n\
         CREATE INDEX IF NOT EXISTS {revoked} ON {table} (revoked_at) \
         WHERE revoked_at IS NOT NULL;\n",
        subject = index("subject"),
        expires = index("expires_at"),
        revoked = index("revoked_at"),
    );
    if dialect == Dialect::Postgres {
        // Version 1 as stores applied it (a migration never changes once
        // released; version 2 replaces this table and trigger, and
        // `tests/fixtures/postgres_schema_v1.sql` pins the text).
        // Every key a record holds, in any slot, is a row here: a second
        // holder, even one racing in a concurrent transaction, is a unique
        // violation. The trigger keeps it in step with every insert, delete
        // and change of a lookup key (a key moving between slots of one
        // record is deleted and inserted again by the same row's trigger).
        let keys = qualified(LOOKUP_KEYS_TABLE);
        let function = qualified(&format!("{TABLE}_sync_lookup_keys"));
        let [current, previous, superseded] = LOOKUP_KEY_COLUMNS;
        // The id too: lookups join on it, so a row whose id changed (by hand,
        // or damage) is still found, and reported as corrupt.
        let changed = std::iter::once("id")
            .chain(LOOKUP_KEY_COLUMNS)
            .map(|c| format!("OLD.{c} IS DISTINCT FROM NEW.{c}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        schema_sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {keys} \
             (lookup_key BYTEA NOT NULL PRIMARY KEY, id BYTEA NOT NULL);\n\
             CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n\
             BEGIN\n\
             IF TG_OP <> 'INSERT' THEN\n\
             DELETE FROM {keys} WHERE lookup_key IN \
             (OLD.{current}, OLD.{previous}, OLD.{superseded}) AND id = OLD.id;\n\
             END IF;\n\
             IF TG_OP <> 'DELETE' THEN\n\
             INSERT INTO {keys} (lookup_key, id) SELECT key, NEW.id FROM \
             unnest(ARRAY[NEW.{current}, NEW.{previous}, NEW.{superseded}]) AS key \
             WHERE key IS NOT NULL;\n\
             END IF;\n\
             RETURN NULL;\n\
             END\n\
             $fn$;\n\
             DROP TRIGGER IF EXISTS {TABLE}_insert_lookup_keys ON {table};\n\
             CREATE TRIGGER {TABLE}_insert_lookup_keys AFTER INSERT ON {table} \
             FOR EACH ROW EXECUTE FUNCTION {function}();\n\
             DROP TRIGGER IF EXISTS {TABLE}_update_lookup_keys ON {table};\n\
             CREATE TRIGGER {TABLE}_update_lookup_keys AFTER UPDATE ON {table} \
             FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION {function}();\n\
             DROP TRIGGER IF EXISTS {TABLE}_delete_lookup_keys ON {table};\n\
             CREATE TRIGGER {TABLE}_delete_lookup_keys AFTER DELETE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION {function}();\n"
        ));
    }
    let mut migrations = vec![(1, schema_sql)];
    if dialect == Dialect::Postgres {
        migrations.push((2, postgres_rows_per_key(schema)));
        // Then the store fills `record` in from the other columns
        // ([`Queries::fill_select`]) and drops those it replaces
        // ([`Queries::fill_finish`]), in the same transaction.
        migrations.push((
            RECORD_COLUMN,
            format!("ALTER TABLE {table} ADD COLUMN record BYTEA;\n"),
        ));
        // Settings only: no row moves, and pages written before keep their
        // fill until their rows are updated.
        migrations.push((
            4,
            format!("ALTER TABLE {table} SET (fillfactor = {FILLFACTOR});\n"),
        ));
    }
    migrations
}

/// PostgreSQL's fillfactor for the table (version 4; version 1 had 70).
///
/// A data write changes no indexed column, so with room on its page it is
/// a heap-only (HOT) update that touches no index. But PostgreSQL also
/// prunes a page (a WAL record, and the page's tuples compacted) whenever an
/// access finds its free space below `100 - fillfactor` percent (at least
/// 10%), so the more room the fillfactor keeps, the sooner pages count as
/// due. Measured (`PG_FILLFACTOR` in the loopback comparison, every request
/// one data write to one of 1,000 sessions, `pg_waldump --stats`): 0.48–0.58
/// prune records per update at 70, 0.27 at 90, 0.22–0.36 at 100, with nearly
/// every update heap-only at each; PostgreSQL's CPU per write was lower at 90
/// or 100 than at 70 in most alternated runs. 90 keeps room for the first
/// update of a row that was just inserted.
pub(crate) const FILLFACTOR: u32 = 90;

/// PostgreSQL's schema version 3: the whole record in one `record` column
/// (see [`POSTGRES_COLUMNS`]), filled in by the store from the columns of
/// version 2 as it upgrades.
pub(crate) const RECORD_COLUMN: i64 = 3;

/// PostgreSQL, version 2: the record three times, a row per slot, keyed by
/// the slot's lookup key (so a lookup is one probe of one index and no key
/// can have two holders), in place of a row per record and the lookup-keys
/// table a trigger kept. The table is converted in place, so its owner,
/// grants and settings stay, and every record is kept: its row becomes slot
/// 0's, and rows for slots 1 and 2 are added.
fn postgres_rows_per_key(schema: Option<&str>) -> String {
    let qualified = |name: &str| match schema {
        Some(schema) => format!("\"{schema}\".{name}"),
        None => name.to_owned(),
    };
    let table = qualified(TABLE);
    let names = COLUMNS.map(|c| c.name).join(", ");
    let [_, previous, superseded] = LOOKUP_KEY_COLUMNS;
    let previous = placeholder(previous, "id", 1);
    let superseded = placeholder(superseded, "id", 2);
    let dropped_indexes = LOOKUP_KEY_COLUMNS
        .iter()
        .chain(&["subject", "expires_at", "revoked_at"])
        .map(|name| qualified(&format!("{TABLE}_{name}")))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "DROP FUNCTION IF EXISTS {function}() CASCADE;\n\
         DROP TABLE IF EXISTS {keys};\n\
         DROP INDEX IF EXISTS {dropped_indexes};\n\
         ALTER TABLE {table} DROP CONSTRAINT {TABLE}_pkey, \
         ADD COLUMN lookup_key BYTEA, ADD COLUMN slot INTEGER;\n\
         UPDATE {table} SET lookup_key = current_lookup_key, slot = 0;\n\
         INSERT INTO {table} (lookup_key, slot, {names}) \
         SELECT {previous}, 1, {names} FROM {table} WHERE slot = 0 \
         UNION ALL SELECT {superseded}, 2, {names} FROM {table} WHERE slot = 0;\n\
         ALTER TABLE {table} ALTER COLUMN lookup_key SET NOT NULL, \
         ALTER COLUMN slot SET NOT NULL, \
         ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (lookup_key) DEFERRABLE INITIALLY IMMEDIATE, \
         ADD CONSTRAINT {TABLE}_id_slot UNIQUE (id, slot);\n\
         CREATE INDEX {TABLE}_subject ON {table} (subject, created_at DESC) \
         WHERE subject IS NOT NULL AND slot = 0;\n\
         CREATE INDEX {TABLE}_expires_at ON {table} (expires_at) WHERE slot = 0;\n\
         CREATE INDEX {TABLE}_revoked_at ON {table} (revoked_at) \
         WHERE revoked_at IS NOT NULL AND slot = 0;\n",
        function = qualified(&format!("{TABLE}_sync_lookup_keys")),
        keys = qualified(LOOKUP_KEYS_TABLE),
    )
}

/// A database error without its detail: PostgreSQL's detail and SQLite's
/// messages can quote the values of a row (a lookup key), which must never
/// reach an error chain or a log.
#[derive(Debug, thiserror::Error)]
#[error("database error{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
pub(crate) struct DatabaseError {
    code: Option<String>,
    message: String,
}

/// Maps a driver error: a unique violation is a [`StoreError::Conflict`],
/// a database error keeps its code and message but not its detail, anything
/// else is a backend error with its source.
pub(crate) fn sqlx_error(operation: &'static str, error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        sqlx::Error::Database(db) => StoreError::backend(
            operation,
            DatabaseError {
                code: db.code().map(|c| c.into_owned()),
                message: db.message().to_owned(),
            },
        ),
        other => StoreError::backend(operation, other),
    }
}

/// How a dialect reads the columns whose stored form differs: timestamps
/// (as microseconds since the Unix epoch) and `persistent`. Columns are
/// read by position (a name costs a hash lookup per column and row).
pub(crate) trait DialectRow: Row {
    /// A timestamp column, or `None` for SQL `NULL`.
    fn micros(&self, index: usize) -> Result<Option<i64>, sqlx::Error>;
    /// The `persistent` column as `0` or `1` (anything else is corrupt).
    fn persistent(&self, index: usize) -> Result<i64, sqlx::Error>;
}

/// The position of the column `name` in [`COLUMNS`]; a name that is not
/// there fails the build.
const fn position(name: &str) -> usize {
    let mut i = 0;
    while i < COLUMNS.len() {
        let column = COLUMNS[i].name.as_bytes();
        let wanted = name.as_bytes();
        if column.len() == wanted.len() {
            let mut j = 0;
            while j < column.len() && column[j] == wanted[j] {
                j += 1;
            }
            if j == column.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("no such column")
}

/// Reads a row of [`COLUMNS`] into a [`RawRecord`]. [`COLUMNS`] are the
/// row's last columns, in their order (every statement selects them after
/// anything else, such as a lookup's `slot`). A value that does not decode
/// is corruption, named by column, with the record's id if that could be
/// read; the driver's message is left out (it may quote the value).
pub(crate) fn raw_from_row<R>(row: &R) -> Result<RawRecord, StoreError>
where
    R: DialectRow,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let Some(first) = row.len().checked_sub(COLUMNS.len()) else {
        return Err(StoreError::corrupt(None, "a row has too few columns"));
    };
    let id_bytes: Vec<u8> = row
        .try_get(first + const { position("id") })
        .map_err(|_| StoreError::corrupt(None, "`id` does not decode"))?;
    let id = session_id(&id_bytes).ok();
    let bad = |name: &'static str| {
        move |_: sqlx::Error| StoreError::corrupt(id, format!("`{name}` does not decode"))
    };
    macro_rules! get {
        ($name:literal) => {
            row.try_get(first + const { position($name) })
                .map_err(bad($name))?
        };
    }
    macro_rules! at {
        ($name:literal) => {
            row.micros(first + const { position($name) })
                .map_err(bad($name))?
        };
    }
    Ok(RawRecord {
        id: id_bytes,
        generation: get!("generation"),
        subject: get!("subject"),
        created_at: at!("created_at"),
        authenticated_at: at!("authenticated_at"),
        last_seen_at: at!("last_seen_at"),
        expires_at: at!("expires_at"),
        absolute_expires_at: at!("absolute_expires_at"),
        idle_timeout_secs: get!("idle_timeout_secs"),
        persistent: row
            .persistent(first + const { position("persistent") })
            .map_err(bad("persistent"))?,
        access_expires_at: at!("access_expires_at"),
        current_lookup_key: get!("current_lookup_key"),
        current_key_version: get!("current_key_version"),
        previous_lookup_key: get!("previous_lookup_key"),
        previous_key_version: get!("previous_key_version"),
        previous_rotated_at: at!("previous_rotated_at"),
        previous_valid_until: at!("previous_valid_until"),
        superseded_lookup_key: get!("superseded_lookup_key"),
        superseded_key_version: get!("superseded_key_version"),
        revoked_at: at!("revoked_at"),
        revoked_reason: get!("revoked_reason"),
        revoked_actor: get!("revoked_actor"),
        user_agent: get!("user_agent"),
        client_ip: get!("client_ip"),
        data: get!("data"),
    })
}

/// Checks a record a read returned against the row that returned it:
/// `selected` is whether the record has what the statement selected the row
/// by (the lookup key in the row's slot, the id, the subject), and the row
/// was active at `now`, so the record must be. PostgreSQL writes its
/// `record` column in the same statement as the columns its reads select
/// by, so a disagreement is damage: corruption, never another session, nor
/// one served past its end.
pub(crate) fn check_read(
    record: &crate::record::SessionRecord,
    selected: bool,
    now: time::OffsetDateTime,
) -> Result<(), StoreError> {
    if !selected {
        return Err(StoreError::corrupt(
            Some(record.id),
            "a row holds a record other than the one it was found by",
        ));
    }
    if !record.is_active(now) {
        return Err(StoreError::corrupt(
            Some(record.id),
            "an active row holds a record that is not",
        ));
    }
    Ok(())
}

/// The slot a lookup row's `slot` column names.
pub(crate) fn slot_of_row(slot: i32) -> Result<crate::record::Slot, StoreError> {
    use crate::record::Slot;
    match slot {
        0 => Ok(Slot::Current),
        1 => Ok(Slot::Previous),
        2 => Ok(Slot::Superseded),
        _ => Err(StoreError::corrupt(None, "a lookup row names no slot")),
    }
}

/// Implements [`SessionStore`](crate::SessionStore) for a SQL store with
/// fields `pool` and `queries`. The store provides, as inherent functions:
/// `bind(query, Value) -> query`, `insert_capped_sql`, `replace_sql` and
/// `revoke_sql` (which differ per dialect), `raw(record)` (the columns'
/// values), `encode_record(record) -> Vec<u8>` (the `record` column's
/// value; SQLite has none) and `record_from_row(row)`; `$ts` encodes a timestamp for the driver.
macro_rules! sql_store_impl {
    ($store:ty, ts = $ts:path) => {
        #[async_trait::async_trait]
        impl $crate::store::SessionStore for $store {
            async fn find_active(
                &self,
                candidates: &[$crate::keys::Candidate],
                now: time::OffsetDateTime,
            ) -> Result<Vec<$crate::record::SessionMatch>, $crate::store::StoreError> {
                use sqlx::Row as _;
                let keys = $crate::store::raw::CandidateKeys::new(candidates);
                if keys.distinct().is_empty() {
                    return Ok(Vec::new());
                }
                let sql = self.queries.find_active(keys.distinct().len());
                let mut query = sqlx::query(&sql);
                for key in keys.distinct() {
                    query = query.bind(&key.as_bytes()[..]);
                }
                let query = query.bind($ts(now));
                // One key (the usual lookup) is held by one slot of one record
                // at most: sqlx's `fetch_optional` skips the row stream that
                // `fetch_all` builds.
                let rows =
                    $crate::store::kept::leased!(self.kept, |conn| match keys.distinct().len() {
                        1 => query.fetch_optional(conn).await.map(Vec::from_iter),
                        _ => query.fetch_all(conn).await,
                    })
                    .map_err(|e| $crate::store::sql::sqlx_error("find_active", e))?;
                let mut found = Vec::with_capacity(rows.len());
                for row in &rows {
                    // `slot` comes first, before the record's columns.
                    let slot: i32 = row.try_get(0).map_err(|_| {
                        $crate::store::StoreError::corrupt(None, "`slot` does not decode")
                    })?;
                    let slot = $crate::store::sql::slot_of_row(slot)?;
                    let record = Self::record_from_row(row)?;
                    let holds = record
                        .credential(slot)
                        .is_some_and(|c| keys.distinct().contains(&c.lookup_key));
                    $crate::store::sql::check_read(&record, holds, now)?;
                    keys.matches(&std::sync::Arc::new(record), slot, &mut found);
                }
                Ok(found)
            }

            async fn get_active(
                &self,
                id: &$crate::record::SessionId,
                now: time::OffsetDateTime,
            ) -> Result<
                Option<std::sync::Arc<$crate::record::SessionRecord>>,
                $crate::store::StoreError,
            > {
                let row = $crate::store::kept::leased!(self.kept, |conn| {
                    sqlx::query(&self.queries.get_active)
                        .bind(&id.as_bytes()[..])
                        .bind($ts(now))
                        .fetch_optional(conn)
                        .await
                })
                .map_err(|e| $crate::store::sql::sqlx_error("get_active", e))?;
                match row {
                    None => Ok(None),
                    Some(row) => {
                        let record = Self::record_from_row(&row)?;
                        $crate::store::sql::check_read(&record, record.id == *id, now)?;
                        Ok(Some(std::sync::Arc::new(record)))
                    }
                }
            }

            async fn insert(
                &self,
                record: &$crate::record::SessionRecord,
            ) -> Result<(), $crate::store::StoreError> {
                record
                    .validate()
                    .map_err($crate::store::StoreError::Invalid)?;
                let raw = Self::raw(record)?;
                let stored = Self::encode_record(record);
                let mut query = sqlx::query(&self.queries.insert);
                for value in $crate::store::sql::insert_values(self.queries.dialect, &raw, &stored)
                {
                    query = Self::bind(query, value);
                }
                let done =
                    $crate::store::kept::leased!(self.kept, |conn| query.execute(conn).await)
                        .map_err(|e| $crate::store::sql::sqlx_error("insert", e))?;
                // SQLite inserts one row, PostgreSQL one per lookup key.
                match done.rows_affected() {
                    // A lookup key of the record is already held.
                    0 => Err($crate::store::StoreError::Conflict),
                    _ => Ok(()),
                }
            }

            async fn insert_capped(
                &self,
                record: &$crate::record::SessionRecord,
                now: time::OffsetDateTime,
                cap: &$crate::store::SubjectCap,
            ) -> Result<Vec<$crate::record::SessionId>, $crate::store::StoreError> {
                record
                    .validate()
                    .map_err($crate::store::StoreError::Invalid)?;
                cap.revocation
                    .validate()
                    .map_err($crate::store::StoreError::Invalid)?;
                let Some(subject) = record.subject.as_deref() else {
                    return self.insert(record).await.map(|()| Vec::new());
                };
                let raw = Self::raw(record)?;
                let stored = Self::encode_record(record);
                // How many of the others stay: the new one takes a place.
                let keep = i64::from(cap.max_sessions.saturating_sub(1));
                self.insert_capped_sql(subject, &raw, &stored, now, cap, keep)
                    .await
            }

            async fn replace(
                &self,
                current: &$crate::record::SessionRecord,
                next: &$crate::record::SessionRecord,
                now: time::OffsetDateTime,
            ) -> Result<bool, $crate::store::StoreError> {
                $crate::store::check_successor(current, next)?;
                let expected = i64::try_from(current.generation).map_err(|_| {
                    $crate::store::StoreError::Invalid("the generation is out of range")
                })?;
                let raw = Self::raw(next)?;
                let stored = Self::encode_record(next);
                self.replace_sql(current, expected, &raw, &stored, now)
                    .await
            }

            async fn revoke(
                &self,
                id: &$crate::record::SessionId,
                subject: Option<&str>,
                now: time::OffsetDateTime,
                revocation: &$crate::record::Revocation,
            ) -> Result<$crate::record::RevokeOutcome, $crate::store::StoreError> {
                revocation
                    .validate()
                    .map_err($crate::store::StoreError::Invalid)?;
                self.revoke_sql(id, subject, now, revocation).await
            }

            async fn revoke_all_for_subject(
                &self,
                subject: &str,
                now: time::OffsetDateTime,
                revocation: &$crate::record::Revocation,
                except: Option<&$crate::record::SessionId>,
            ) -> Result<u64, $crate::store::StoreError> {
                revocation
                    .validate()
                    .map_err($crate::store::StoreError::Invalid)?;
                let query = || {
                    sqlx::query(&self.queries.revoke_all)
                        .bind(subject)
                        .bind($ts(now))
                        .bind(revocation.reason.as_str())
                        .bind(revocation.actor.as_deref())
                        .bind(except.map(|id| &id.as_bytes()[..]))
                };
                self.changes(query)
                    .await
                    .map_err(|e| $crate::store::sql::sqlx_error("revoke_all_for_subject", e))
            }

            async fn list_for_subject(
                &self,
                subject: &str,
                now: time::OffsetDateTime,
            ) -> Result<Vec<$crate::record::ActiveSessionRecord>, $crate::store::StoreError> {
                let rows = $crate::store::kept::leased!(self.kept, |conn| {
                    sqlx::query(&self.queries.list)
                        .bind(subject)
                        .bind($ts(now))
                        .fetch_all(conn)
                        .await
                })
                .map_err(|e| $crate::store::sql::sqlx_error("list_for_subject", e))?;
                rows.iter()
                    .map(|row| {
                        let record = Self::record_from_row(row)?;
                        let theirs = record.subject.as_deref() == Some(subject);
                        $crate::store::sql::check_read(&record, theirs, now)?;
                        Ok(record.to_active(record.current.key_version))
                    })
                    .collect()
            }

            async fn count_by_key_version(
                &self,
                now: time::OffsetDateTime,
                seen_since: time::OffsetDateTime,
            ) -> Result<
                std::collections::BTreeMap<$crate::keys::KeyVersion, $crate::record::VersionCount>,
                $crate::store::StoreError,
            > {
                let rows: Vec<(i64, i64, i64)> = $crate::store::kept::leased!(self.kept, |conn| {
                    sqlx::query_as(&self.queries.count)
                        .bind($ts(now))
                        .bind($ts(seen_since))
                        .fetch_all(conn)
                        .await
                })
                .map_err(|e| $crate::store::sql::sqlx_error("count_by_key_version", e))?;
                rows.into_iter()
                    .map(|(version, recent, dormant)| {
                        let version = u32::try_from(version).map_err(|_| {
                            $crate::store::StoreError::corrupt(
                                None,
                                "a key version is out of range",
                            )
                        })?;
                        let count = $crate::record::VersionCount {
                            recent: u64::try_from(recent).unwrap_or(0),
                            dormant: u64::try_from(dormant).unwrap_or(0),
                        };
                        Ok(($crate::keys::KeyVersion(version), count))
                    })
                    .collect()
            }

            async fn purge_expired(
                &self,
                now: time::OffsetDateTime,
            ) -> Result<u64, $crate::store::StoreError> {
                // In batches, each its own statement (and transaction), so
                // no lock is held for long: until one deletes less than a
                // full batch.
                let batch = $crate::store::sql::PURGE_BATCH;
                let mut purged = 0;
                loop {
                    let query = || sqlx::query(&self.queries.purge).bind($ts(now)).bind(batch);
                    let done = self
                        .changes(query)
                        .await
                        .map_err(|e| $crate::store::sql::sqlx_error("purge_expired", e))?;
                    purged += done;
                    if done < batch as u64 {
                        return Ok(purged);
                    }
                }
            }
        }
    };
}
pub(crate) use sql_store_impl;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_columns() {
        let raw = RawRecord::default();
        for (column, value) in COLUMNS.iter().zip(values(&raw)) {
            let kind = match value {
                Value::Bytes(_) => Kind::Bytes,
                Value::Int(_) => Kind::Int,
                Value::Time(_) => Kind::Time,
                Value::Text(_) => Kind::Text,
                Value::Bool(_) => Kind::Bool,
                Value::Json(_) => Kind::Json,
            };
            assert_eq!(kind, column.kind, "{}", column.name);
        }
        for (i, name) in INSERT_KEY_PARAMS.iter().zip(LOOKUP_KEY_COLUMNS) {
            assert_eq!(COLUMNS[i - 1].name, name);
        }
        assert_eq!(COLUMNS.iter().filter(|c| !c.mutable).count(), 4);
    }

    /// `tests/fixtures/postgres_schema_v1.sql` is schema version 1 as
    /// PostgreSQL stores applied it (in schema `ths_schema_v1`): the
    /// upgrade test starts from it.
    #[test]
    fn the_version_1_fixture_is_version_1() {
        let v1 = &migrations(Dialect::Postgres, Some("ths_schema_v1"))[0];
        assert_eq!(v1.0, 1);
        assert_eq!(
            v1.1,
            include_str!("../../tests/fixtures/postgres_schema_v1.sql")
        );
    }

    #[test]
    fn sqlite_statements_use_numbered_parameters() {
        let q = Queries::new(Dialect::Sqlite, None);
        for sql in [
            &q.insert, &q.replace, &q.revoke, &q.count, &q.list, &q.evict, &q.purge,
        ] {
            assert!(!sql.contains('$'), "{sql}");
        }
        let lookup = q.find_active(2);
        assert!(
            lookup.contains("current_lookup_key IN (?1, ?2)"),
            "{lookup}"
        );
        assert!(
            lookup.contains("superseded_lookup_key IN (?1, ?2)"),
            "{lookup}"
        );
        assert!(lookup.contains("expires_at > ?3"));
        assert_eq!(lookup.matches(" UNION ALL ").count(), 2);
        assert!(q.find_active(40).contains("?41"));
        assert!(q.replace.contains("generation = ?2"));
        assert!(q.replace.contains("data = ?27"), "{}", q.replace);
    }

    #[test]
    fn postgres_statements_read_the_record_column_and_avoid_or_across_key_columns() {
        let q = Queries::new(Dialect::Postgres, Some("s"));
        // The kept columns, then the three keys and the record.
        assert!(
            q.insert.starts_with(
                "INSERT INTO \"s\".tower_hmac_session_records (lookup_key, slot, id, generation, \
                 subject, created_at, last_seen_at, expires_at, absolute_expires_at, \
                 current_key_version, previous_key_version, previous_valid_until, revoked_at, \
                 revoked_reason, revoked_actor, record) SELECT k.lookup_key, k.slot, $1, $2, $3,"
            ),
            "{}",
            q.insert
        );
        assert!(
            q.insert.contains(
                "$13, CASE WHEN k.held THEN $17 ELSE ''::bytea END \
                 FROM (VALUES ($14::bytea, 0, true), \
                 (coalesce($15::bytea, $1 || '\\x01'::bytea), 1, $15::bytea IS NOT NULL), \
                 (coalesce($16::bytea, $1 || '\\x02'::bytea), 2, $16::bytea IS NOT NULL)) \
                 AS k (lookup_key, slot, held)"
            ),
            "{}",
            q.insert
        );
        let raw = RawRecord::default();
        assert_eq!(insert_values(Dialect::Postgres, &raw, b"r").len(), 17);
        // `$1` id, `$2` generation, `$3` now, then `mutable_values`.
        // The keys, the record, nine mutable columns and three that never
        // change: `$4` … `$19`.
        assert_eq!(mutable_values(Dialect::Postgres, &raw, b"r").len(), 16);
        let head = "SET lookup_key = $4::bytea, record = $7, generation = $8, last_seen_at = $9,";
        let cas = "revoked_actor = $16 WHERE id = $1 AND slot = 0 AND generation = $2 AND";
        let unchanged = "AND subject IS NOT DISTINCT FROM $17 AND created_at = $18 \
                         AND absolute_expires_at = $19";
        for replace in [&q.replace, &q.replace_rows] {
            assert!(replace.contains(head), "{replace}");
            assert!(replace.contains(cas), "{replace}");
            assert!(replace.contains(unchanged), "{replace}");
        }
        assert!(
            q.replace.ends_with(&format!(
                "{unchanged} AND substring(record FROM 1 FOR octet_length($20::bytea)) = $20::bytea \
                 AND $5::bytea IS NULL AND $6::bytea IS NULL"
            )),
            "{}",
            q.replace
        );
        // The other rows: each to its slot's key, with the record only
        // while it holds one, and only after slot 0's row.
        assert!(
            q.replace_rows.contains(
                "rest AS (UPDATE \"s\".tower_hmac_session_records SET lookup_key = CASE slot \
                 WHEN 1 THEN coalesce($5::bytea, id || '\\x01'::bytea) \
                 ELSE coalesce($6::bytea, id || '\\x02'::bytea) END, \
                 record = CASE WHEN (CASE slot WHEN 1 THEN $5::bytea ELSE $6::bytea END) \
                 IS NULL THEN ''::bytea ELSE $7 END, generation = $8,"
            ),
            "{}",
            q.replace_rows
        );
        assert!(
            q.replace_rows.contains(
                "revoked_actor = $16 WHERE id = $1 AND slot IN ($21, $22) \
                 AND EXISTS (SELECT 1 FROM head) RETURNING 1)"
            ),
            "{}",
            q.replace_rows
        );
        assert!(!q.insert.contains("EXISTS"), "{}", q.insert);
        assert!(!q.insert.contains("jsonb"), "{}", q.insert);
        let lookup = q.find_active(3);
        assert_eq!(
            lookup,
            "SELECT slot, record FROM \"s\".tower_hmac_session_records \
             WHERE lookup_key IN ($1, $2, $3) AND revoked_at IS NULL AND expires_at > $4 \
             AND absolute_expires_at > $4"
        );
        for whole in [&q.get_active, &q.list, &q.count] {
            assert!(whole.contains("slot = 0"), "{whole}");
        }
        assert!(q.get_active.starts_with("SELECT record FROM"));
        assert!(q.list.starts_with("SELECT record FROM"));
        assert!(q.revoke.starts_with("WITH updated AS"));
        assert!(q.revoke_all.ends_with("WHERE slot = 0"), "{}", q.revoke_all);
        // The subject is the insert's `$3`; after the record (`$17`): now,
        // reason, actor, except, keep.
        assert!(
            q.insert_capped
                .contains("revoked_at = $18, revoked_reason = $19, revoked_actor = $20"),
            "{}",
            q.insert_capped
        );
        assert!(
            q.insert_capped.contains("WHERE subject = $3 AND slot = 0"),
            "{}",
            q.insert_capped
        );
        assert!(q.insert_capped.contains("$21 IS NULL OR id <> $21"));
        assert!(q.insert_capped.contains("n > $22"), "{}", q.insert_capped);
        assert!(!q.purge.contains("absolute_expires_at"), "{}", q.purge);
        assert!(q.purge.contains("LIMIT $2"), "{}", q.purge);
        assert!(q.purge.ends_with("WHERE slot = 0"), "{}", q.purge);
        assert!(q.migrations[0].1.contains("superseded_lookup_key BYTEA,"));
        let (version, v2) = &q.migrations[1];
        assert_eq!(*version, 2);
        assert!(v2.contains("\"s\".tower_hmac_session_lookup_keys"), "{v2}");
        assert!(v2.contains("PRIMARY KEY (lookup_key) DEFERRABLE"), "{v2}");
        assert!(!v2.contains("CREATE TABLE"), "converted in place: {v2}");
        assert_eq!(q.migrations[2].0, RECORD_COLUMN);
        assert_eq!(
            q.migrations[3],
            (
                4,
                "ALTER TABLE \"s\".tower_hmac_session_records SET (fillfactor = 90);\n".to_owned()
            )
        );
        assert_eq!(q.migrations.len(), 4);
        // Version 3 drops every column but those its statements use.
        for column in COLUMNS {
            let dropped = q
                .fill_finish
                .contains(&format!("DROP COLUMN {},", column.name))
                || q.fill_finish
                    .ends_with(&format!("DROP COLUMN {}", column.name));
            assert_eq!(
                dropped,
                !POSTGRES_COLUMNS.contains(&column.name),
                "{}",
                column.name
            );
        }
        assert!(q.fill_select.starts_with("SELECT id, id, generation"));
        assert!(q.fill_select.contains("data::text AS data"));
    }
}

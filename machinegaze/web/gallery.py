"""The gallery: every picture the lab makes, with its latent (.npz), its parameters (JSON) and its parents.

Layout under the data dir:
    gallery.sqlite3        items, their parents (lineage) and registered run folders
    items/<id>.png         the picture
    items/<id>.npz         its latent ws [1, num_ws, w_dim] (key 'w', NVlabs' projector convention), if any
    runs/<kind>-<token>/   folders of long runs started from the web (e.g. uncanny fine-tuning)

Ids are random url-safe tokens; a request names an id, never a path: the file names are made here from ids that
were looked up in the database. The schema is versioned (PRAGMA user_version) and marked as ours (PRAGMA
application_id). A file that is not an SQLite database, is damaged, belongs to another program, or was written by
a newer machinegaze is refused with a GazeError *before anything is written to it*.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from machinegaze import GazeError

DB_NAME = "gallery.sqlite3"
APPLICATION_ID = 0x4D47415A  # "MGAZ": marks the file as a machinegaze gallery
SQLITE_MAGIC = b"SQLite format 3\x00"
ID_PATTERN = r"^[A-Za-z0-9_-]{6,64}$"
_ID_RE = re.compile(ID_PATTERN)

# Each entry moves the schema from version i to i + 1. Append only; never edit a released migration.
MIGRATIONS: list[str] = [
    # 1: items and lineage
    """
    CREATE TABLE items (
        id       TEXT PRIMARY KEY,
        kind     TEXT NOT NULL,
        created  REAL NOT NULL,
        title    TEXT NOT NULL DEFAULT '',
        params   TEXT NOT NULL DEFAULT '{}',
        image    TEXT,
        latent   TEXT,
        width    INTEGER,
        height   INTEGER,
        dedupe   TEXT UNIQUE
    );
    CREATE INDEX items_created ON items(created);
    CREATE INDEX items_kind ON items(kind, created);
    CREATE TABLE parents (
        child    TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        parent   TEXT NOT NULL REFERENCES items(id),
        role     TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (child, position)
    );
    CREATE INDEX parents_parent ON parents(parent);
    """,
    # 2: run folders (uncanny runs started here or registered with `gaze serve --uncanny-dir`)
    """
    CREATE TABLE runs (
        id       TEXT PRIMARY KEY,
        kind     TEXT NOT NULL,
        created  REAL NOT NULL,
        dir      TEXT NOT NULL UNIQUE,
        title    TEXT NOT NULL DEFAULT '',
        params   TEXT NOT NULL DEFAULT '{}'
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def new_id() -> str:
    """An unguessable url-safe token (job ids, item ids, run ids)."""
    return secrets.token_urlsafe(12)


def valid_id(s: str) -> bool:
    return isinstance(s, str) and bool(_ID_RE.match(s))


@dataclass
class Item:
    id: str
    kind: str
    created: float
    title: str
    params: dict
    has_image: bool
    has_latent: bool
    width: Optional[int]
    height: Optional[int]
    parents: list[dict] = field(default_factory=list)  # [{"id", "role", "kind", "title"}], in order

    def to_dict(self) -> dict:
        base = f"/api/items/{self.id}"
        return {
            "id": self.id,
            "kind": self.kind,
            "created": self.created,
            "title": self.title,
            "params": self.params,
            "width": self.width,
            "height": self.height,
            "parents": self.parents,
            "image_url": f"{base}/image.png" if self.has_image else None,
            "latent_url": f"{base}/latent.npz" if self.has_latent else None,
            "url": base,
        }


@dataclass
class Run:
    id: str
    kind: str
    created: float
    dir: Path
    title: str
    params: dict

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "created": self.created, "title": self.title, "params": self.params}


# ---------------------------------------------------------------- opening safely
def _check_existing(path: Path) -> None:
    """Refuse (GazeError) a file that is not an empty or machinegaze SQLite database, without writing to it."""
    size = path.stat().st_size
    if size == 0:
        return  # an empty file holds nothing to lose: SQLite treats it as a new database
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise GazeError(
            f"{path}: not a machinegaze gallery (not an SQLite database); it was left untouched. "
            f"Move it away or choose another --data-dir"
        )
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
            version = con.execute("PRAGMA user_version").fetchone()[0]
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            check = con.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise GazeError(
            f"{path}: the gallery database is damaged ({e}); it was left untouched. "
            f"Move it away or choose another --data-dir"
        ) from None
    if check != "ok":
        raise GazeError(f"{path}: the gallery database is damaged (integrity check: {check}); it was left untouched")
    if app_id != APPLICATION_ID:
        if app_id == 0 and version == 0 and not tables:
            return  # a blank SQLite file
        raise GazeError(
            f"{path}: an SQLite database of another program (application_id {app_id:#x}, tables: "
            f"{', '.join(tables[:5]) or 'none'}), not a machinegaze gallery; it was left untouched"
        )
    if version > SCHEMA_VERSION:
        raise GazeError(
            f"{path}: gallery schema version {version} is newer than this machinegaze understands "
            f"({SCHEMA_VERSION}); upgrade machinegaze (the file was left untouched)"
        )


def migrate(con: sqlite3.Connection, upto: int = SCHEMA_VERSION) -> int:
    """Apply the migrations after the database's user_version, each in its own transaction. Returns the version."""
    version = con.execute("PRAGMA user_version").fetchone()[0]
    for v in range(version, upto):
        con.execute("BEGIN IMMEDIATE")
        try:
            for stmt in [s.strip() for s in MIGRATIONS[v].split(";") if s.strip()]:
                con.execute(stmt)
            con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            con.execute(f"PRAGMA user_version = {v + 1}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return max(version, upto)


class Gallery:
    """Thread-safe access to the gallery database and its files (one connection behind a lock)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.root = Path(data_dir).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise GazeError(f"--data-dir {self.root} is a file, not a folder")
        self.db_path = self.root / DB_NAME
        if self.db_path.exists():
            if not self.db_path.is_file():
                raise GazeError(f"{self.db_path} is not a file")
            _check_existing(self.db_path)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)  # private: uploads may be personal photos
        (self.root / "items").mkdir(exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._con = sqlite3.connect(str(self.db_path), check_same_thread=False, isolation_level=None, timeout=10)
        self._con.row_factory = sqlite3.Row
        self._con.execute("PRAGMA foreign_keys = ON")
        try:
            self.version = migrate(self._con)
        except sqlite3.DatabaseError as e:
            self._con.close()
            raise GazeError(f"{self.db_path}: could not update the gallery schema ({e})") from None

    def close(self) -> None:
        with self._lock:
            self._con.close()

    # ---- files (names made here from looked-up ids only)
    def image_path(self, item: Item) -> Path:
        if not item.has_image:
            raise KeyError(item.id)
        return self.root / "items" / f"{item.id}.png"

    def latent_path(self, item: Item) -> Path:
        if not item.has_latent:
            raise KeyError(item.id)
        return self.root / "items" / f"{item.id}.npz"

    def run_root(self) -> Path:
        d = self.root / "runs"
        d.mkdir(exist_ok=True)
        return d

    # ---- items
    def _item(self, row: sqlite3.Row, with_parents: bool = True) -> Item:
        it = Item(
            id=row["id"],
            kind=row["kind"],
            created=row["created"],
            title=row["title"],
            params=json.loads(row["params"] or "{}"),
            has_image=bool(row["image"]),
            has_latent=bool(row["latent"]),
            width=row["width"],
            height=row["height"],
        )
        if with_parents:
            it.parents = [
                {"id": r["parent"], "role": r["role"], "kind": r["kind"], "title": r["title"]}
                for r in self._con.execute(
                    "SELECT p.parent, p.role, i.kind, i.title FROM parents p JOIN items i ON i.id = p.parent "
                    "WHERE p.child = ? ORDER BY p.position",
                    (row["id"],),
                )
            ]
        return it

    def get(self, item_id: str) -> Item:
        """The item, or KeyError (also for ids that are not well formed)."""
        if not valid_id(item_id):
            raise KeyError(item_id)
        with self._lock:
            row = self._con.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise KeyError(item_id)
            return self._item(row)

    def find(self, dedupe: str) -> Optional[Item]:
        with self._lock:
            row = self._con.execute("SELECT * FROM items WHERE dedupe = ?", (dedupe,)).fetchone()
            return self._item(row) if row is not None else None

    def add(
        self,
        kind: str,
        *,
        write_image: Optional[Callable[[Path], Any]] = None,
        write_latent: Optional[Callable[[Path], Any]] = None,
        size: Optional[tuple[int, int]] = None,
        params: Optional[dict] = None,
        parents: Sequence[str | tuple[str, str]] = (),
        title: str = "",
        dedupe: Optional[str] = None,
    ) -> Item:
        """Store a new item. `write_image(path)` / `write_latent(path)` write its files (atomically); the row is
        inserted after the files exist. With `dedupe`, an existing item with the same key is returned instead."""
        if dedupe is not None:
            found = self.find(dedupe)
            if found is not None:
                return found
        pairs = [(p, "") if isinstance(p, str) else (p[0], p[1]) for p in parents]
        for pid, _ in pairs:
            self.get(pid)  # KeyError for an unknown parent
        item_id = new_id()
        img = self.root / "items" / f"{item_id}.png"
        lat = self.root / "items" / f"{item_id}.npz"
        try:
            if write_image is not None:
                write_image(img)
            if write_latent is not None:
                write_latent(lat)
            with self._lock:
                self._con.execute("BEGIN IMMEDIATE")
                try:
                    if dedupe is not None:
                        row = self._con.execute("SELECT id FROM items WHERE dedupe = ?", (dedupe,)).fetchone()
                        if row is not None:  # made by another thread meanwhile
                            self._con.execute("ROLLBACK")
                            for p in (img, lat):
                                p.unlink(missing_ok=True)
                            return self.get(row["id"])
                    self._con.execute(
                        "INSERT INTO items(id, kind, created, title, params, image, latent, width, height, dedupe) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            item_id,
                            kind,
                            time.time(),
                            title,
                            json.dumps(params or {}, sort_keys=True),
                            img.name if write_image else None,
                            lat.name if write_latent else None,
                            size[0] if size else None,
                            size[1] if size else None,
                            dedupe,
                        ),
                    )
                    for pos, (pid, role) in enumerate(pairs):
                        self._con.execute(
                            "INSERT INTO parents(child, position, parent, role) VALUES (?, ?, ?, ?)",
                            (item_id, pos, pid, role),
                        )
                    self._con.execute("COMMIT")
                except BaseException:
                    self._con.execute("ROLLBACK")
                    raise
        except BaseException:
            for p in (img, lat):
                p.unlink(missing_ok=True)
            raise
        return self.get(item_id)

    def list(self, kind: Optional[str] = None, limit: int = 60, offset: int = 0) -> tuple[list[Item], int]:
        """Newest first; returns (items, total count)."""
        where, args = ("WHERE kind = ?", [kind]) if kind else ("", [])
        with self._lock:
            total = self._con.execute(f"SELECT COUNT(*) FROM items {where}", args).fetchone()[0]
            rows = self._con.execute(
                f"SELECT * FROM items {where} ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
                args + [int(limit), int(offset)],
            ).fetchall()
            return [self._item(r) for r in rows], total

    def children(self, item_id: str) -> list[dict]:
        with self._lock:
            return [
                {"id": r["id"], "kind": r["kind"], "title": r["title"], "role": r["role"]}
                for r in self._con.execute(
                    "SELECT i.id, i.kind, i.title, p.role FROM parents p JOIN items i ON i.id = p.child "
                    "WHERE p.parent = ? ORDER BY i.created",
                    (item_id,),
                )
            ]

    # ---- runs
    def add_run(self, kind: str, folder: str | os.PathLike, title: str = "", params: Optional[dict] = None) -> Run:
        folder = str(Path(folder).resolve())
        with self._lock:
            row = self._con.execute("SELECT * FROM runs WHERE dir = ?", (folder,)).fetchone()
            if row is None:
                run_id = new_id()
                self._con.execute(
                    "INSERT INTO runs(id, kind, created, dir, title, params) VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, kind, time.time(), folder, title, json.dumps(params or {}, sort_keys=True)),
                )
                row = self._con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            return self._run(row)

    def _run(self, row: sqlite3.Row) -> Run:
        return Run(
            id=row["id"],
            kind=row["kind"],
            created=row["created"],
            dir=Path(row["dir"]),
            title=row["title"],
            params=json.loads(row["params"] or "{}"),
        )

    def get_run(self, run_id: str) -> Run:
        if not valid_id(run_id):
            raise KeyError(run_id)
        with self._lock:
            row = self._con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(run_id)
        return self._run(row)

    def list_runs(self, kind: Optional[str] = None) -> list[Run]:
        where, args = ("WHERE kind = ?", [kind]) if kind else ("", [])
        with self._lock:
            rows = self._con.execute(f"SELECT * FROM runs {where} ORDER BY created DESC", args).fetchall()
        return [self._run(r) for r in rows]

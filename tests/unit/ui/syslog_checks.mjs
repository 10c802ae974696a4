// The checks of test_node_logic.py's syslog test, run by Node.js next to the bundled module.
import assert from "node:assert/strict";
import { appendLines, dateTime, lastPage, matches, pageCount, parseJournal, syslogParams } from "./syslog.js";

const none = { since: "", until: "", service: "" };
// PVE's paging: start counts lines from 0, limit is the page size
assert.deepEqual(syslogParams(0, 50, none), { params: { start: 0, limit: 50 } });
assert.deepEqual(syslogParams(3, 100, { ...none, service: "etcd" }),
  { params: { start: 300, limit: 100, service: "etcd" } });
// since/until as the API's pattern takes them; a datetime-local value's T is a space
assert.deepEqual(syslogParams(0, 50, { ...none, since: "2026-12-07T10:00", until: " 2026-12-07 11:00:30 " }),
  { params: { start: 0, limit: 50, since: "2026-12-07 10:00", until: "2026-12-07 11:00:30" } });
assert.deepEqual(syslogParams(0, 50, { ...none, since: "2026-12-07" }),
  { params: { start: 0, limit: 50, since: "2026-12-07" } });
assert.deepEqual(syslogParams(0, 50, { ...none, since: "yesterday" }), { error: "since" });
assert.deepEqual(syslogParams(0, 50, { ...none, until: "2026-12-07 10" }), { error: "until" });
// until before since: refused at until, nothing sent
assert.deepEqual(syslogParams(0, 50, { ...none, since: "2026-12-07 11:00", until: "2026-12-07 10:00" }),
  { error: "until" });
assert.equal(dateTime(""), "");
assert.equal(dateTime("2026-12-07 10:00:00x"), null);

assert.equal(pageCount(undefined, 50), 1);
assert.equal(pageCount(0, 50), 1);
assert.equal(pageCount(50, 50), 1);
assert.equal(pageCount(51, 50), 2);
assert.equal(lastPage(120, 50), 2);

// the journal: first cursor, lines, last cursor; "nothing new" is the cursor twice
const c1 = "s=binomed;t=1;i=0", c2 = "s=etcd;t=2;i=0";
assert.deepEqual(parseJournal([c1, "a", "b", c2]), { lines: ["a", "b"], last: c2 });
assert.deepEqual(parseJournal([c2, c2]), { lines: [], last: c2 });
assert.deepEqual(parseJournal([]), { lines: [] });

const shown = ["1", "2", "3"];
assert.deepEqual(appendLines(shown, ["4", "5"], 4), ["2", "3", "4", "5"]);
assert.equal(appendLines(shown, [], 4), shown);          // nothing new: the same list
assert.deepEqual(shown, ["1", "2", "3"]);                 // not changed in place

// every word, in any case, anywhere in the line
const line = "Dec 07 10:00:01 n1 binomed: level=warn msg=\"HA fence\"";
assert.ok(matches(line, "WARN fence"));
assert.ok(matches(line, "  "));
assert.ok(!matches(line, "warn etcd"));
console.log("ok");

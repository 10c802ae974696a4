// The texts of a VM's Replication tab (its disks' replicated volumes and their settings);
// merged into the one table of strings.ts.
export const replStrings = {
  "vm.tab.replication": "Replication",
  "repl.nodisks": "This VM has no disk.",
  "repl.notreplicated": "Not on replicated storage: one copy, on its node.",
  "repl.unknown": "On replicated storage, but no node holding its volume answers.",
  "repl.volumespage": "All replicated volumes",
  "repl.settings": "Volume settings (as {node} applies them)",
  "repl.save": "Apply",
  "repl.reset": "Reset",
  "repl.nochange": "Nothing changed.",
  "repl.saved": "Applied on both nodes: {params}.",
  "repl.param.protocol": "Protocol (C: synchronous)",
  "repl.param.allow-two-primaries": "Allow two primaries (live migration)",
  "repl.param.resync-rate": "Resync rate (KiB/s, 0: unlimited)",
  "repl.param.c-plan-ahead": "Controller plan-ahead (1/10 s, 0: fixed rate)",
  "repl.param.c-fill-target": "Controller fill target (KiB)",
  "repl.param.c-delay-target": "Controller delay target (1/10 s)",
  "repl.param.c-max-rate": "Controller maximum rate (KiB/s)",
  "repl.param.c-min-rate": "Rate while the guest does I/O (KiB/s, 0: no throttle)",
  "repl.param.verify-alg": "Online verify digest",
  "repl.param.csums-alg": "Checksum-based resync digest",
} as const;

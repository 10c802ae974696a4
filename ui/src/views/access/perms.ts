// The caller's privileges, from GET /access/permissions, so that the UI shows a write
// button only where the API would allow the write (the API checks again: this is for
// the eye, not for safety).
import { usePoll } from "../../poll";

type Privileges = Record<string, Record<string, number>>;

/** `can(path, priv)`: the caller holds `priv` on `path`, by the answer of
 * /access/permissions (each listed path with its privileges; an unlisted path inherits
 * the propagating privileges of its nearest listed parent). False until it has loaded. */
export function usePerms(): (path: string, ...privs: string[]) => boolean {
  const { data } = usePoll<Privileges>("/access/permissions", 15000);
  return checker(data);
}

/** Like usePerms, but null until /access/permissions has answered: a page hides what
 * the caller may not see only once it knows (no flicker for an administrator). */
export function useKnownPerms(): { can: (path: string, ...privs: string[]) => boolean;
                                   anywhere: (priv: string) => boolean } | null {
  const { data } = usePoll<Privileges>("/access/permissions", 15000);
  return data ? { can: checker(data), anywhere: (priv) => Object.values(data).some((e) => priv in e) } : null;
}

function checker(data: Privileges | undefined): (path: string, ...privs: string[]) => boolean {
  return (path: string, ...privs: string[]) => {
    if (!data) return false;
    let p = path;
    let exact = true;
    for (;;) {
      const entry = data[p];
      if (entry) return privs.some((x) => x in entry && (exact || entry[x] === 1));
      if (p === "/") return false;
      p = p.replace(/\/[^/]*$/, "") || "/";
      exact = false;
    }
  };
}

/** true if the caller holds `priv` on some path (e.g. Permissions.Modify somewhere). */
export function useAnywhere(): (priv: string) => boolean {
  const { data } = usePoll<Privileges>("/access/permissions", 15000);
  return (priv: string) => !!data && Object.values(data).some((e) => priv in e);
}

// Live data without reloads: poll an API path, one request at a time (the next one is
// scheduled when the last has answered), paused while the tab is hidden.
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, get, type Params } from "./api";

export interface Polled<T> {
  data: T | undefined;
  error: ApiError | undefined;
  refresh: () => void;
}

/** `fetch`: how to read the path (`getPage` keeps a paged list's `total`). */
export function usePoll<T>(path: string | null, intervalMs: number,
                           params?: Record<string, string | number>,
                           fetch: (path: string, params?: Params) => Promise<T> = get): Polled<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<ApiError | undefined>(undefined);
  const kick = useRef<() => void>(() => {});
  const key = path === null ? null : path + JSON.stringify(params ?? {});

  useEffect(() => {
    setData(undefined);
    setError(undefined);
    if (path === null) return;
    let alive = true;
    let timer: number | undefined;
    let inflight = false;
    const run = async () => {
      if (!alive || inflight) return;
      window.clearTimeout(timer);
      if (document.hidden) {
        timer = window.setTimeout(run, intervalMs);
        return;
      }
      inflight = true;
      try {
        const d = await fetch(path, params);
        if (alive) {
          setData(d);
          setError(undefined);
        }
      } catch (e) {
        if (alive) setError(e instanceof ApiError ? e : new ApiError(0, String(e)));
      } finally {
        inflight = false;
        if (alive) timer = window.setTimeout(run, intervalMs);
      }
    };
    kick.current = run;
    run();
    return () => {
      alive = false;
      window.clearTimeout(timer);
    };
  }, [key, intervalMs]);

  return { data, error, refresh: () => kick.current() };
}

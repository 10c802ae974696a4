// The Permissions pages load on first use (their own chunk), so the login and the tree
// stay small; until then the page says it is loading.
import type { FunctionComponent } from "preact";
import { useEffect, useState } from "preact/hooks";
import { t } from "../../strings";
import type { AccessPage as Page } from "./index";

type Props = Parameters<typeof Page>[0];
let loaded: FunctionComponent<Props> | null = null;

export function AccessPage(props: Props) {
  const [view, setView] = useState<FunctionComponent<Props> | null>(() => loaded);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    if (loaded) return;
    import("./index").then((m) => { loaded = m.AccessPage; setView(() => m.AccessPage); },
                           (e: Error) => setError(e.message));
  }, []);
  if (error) return <p class="error">{t("common.error", { message: error })}</p>;
  const View = view;
  return View ? <View {...props} /> : <p>{t("common.loading")}</p>;
}

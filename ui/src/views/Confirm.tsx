// A modal dialog on the native <dialog> element: focus is trapped and Escape cancels.
import type { ComponentChildren } from "preact";
import { useEffect, useRef } from "preact/hooks";
import { t } from "../strings";

export function Dialog(props: {
  title: string;
  children?: ComponentChildren;
  okLabel?: string;
  okDisabled?: boolean;
  /** destructive: the focus starts on Cancel, so a stray Enter changes nothing */
  danger?: boolean;
  onOk: () => void;
  onCancel: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
  }, []);
  return (
    <dialog ref={ref} class="dialog" aria-label={props.title}
      onCancel={(e) => { e.preventDefault(); props.onCancel(); }}>
      <form method="dialog" onSubmit={(e) => { e.preventDefault(); props.onOk(); }}>
        <h2>{props.title}</h2>
        {props.children}
        <div class="dialog-buttons">
          <button type="button" onClick={props.onCancel} autofocus={props.danger}>
            {t("dialog.cancel")}
          </button>
          <button type="submit" class={props.danger ? "primary danger" : "primary"}
            disabled={props.okDisabled} autofocus={!props.danger}>
            {props.okLabel ?? t("dialog.ok")}
          </button>
        </div>
      </form>
    </dialog>
  );
}

import { ImageLoraExecutor } from "../../gen/aivera/training/v1/image_loras_pb.js";
import { useI18n } from "../../i18n/i18n";
import { executorName, EXECUTORS } from "./rules";

/** Who trains: the server's default, or one named (the server refuses one it has not
 *  enabled, in words). */
export function ExecutorSelect({ value, onChange }: { value: ImageLoraExecutor; onChange: (e: ImageLoraExecutor) => void }) {
  const { t } = useI18n();
  return (
    <label>
      {t("executor")}
      <select value={value} onChange={(e) => onChange(Number(e.target.value) as ImageLoraExecutor)} data-testid="lora-executor">
        <option value={ImageLoraExecutor.UNSPECIFIED}>{t("serverDefault")}</option>
        {EXECUTORS.map((x) => (
          <option key={x} value={x}>
            {t(`executor${executorName(x)}` as "executorSIMULATE")}
          </option>
        ))}
      </select>
    </label>
  );
}

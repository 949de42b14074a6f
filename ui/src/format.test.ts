import { ago, bytes, duration, percent, rate, stateLabel } from "./format";

describe("figures a trader reads", () => {
  it("sizes and rates use the units people say", () => {
    expect(bytes(512)).toBe("512 B");
    expect(bytes(5_500_000)).toBe("5.5 MB");
    expect(bytes(1_073_741_824)).toBe("1.07 GB");
    expect(rate(2_500_000)).toBe("20 Mbit/s");
    expect(rate(100_000)).toBe("0.8 Mbit/s");
  });

  it("durations and times ago read naturally", () => {
    expect(duration(0.3)).toBe("under a second");
    expect(duration(42)).toBe("42 s");
    expect(duration(125)).toBe("2 min 5 s");
    expect(duration(7200)).toBe("2 h");
    expect(ago(null)).toBe("never");
    expect(ago(1000, 1001)).toBe("just now");
    expect(ago(1000, 1300)).toBe("5 min ago");
  });

  it("progress never leaves 0..100 and an empty transfer is complete", () => {
    expect(percent(5, 10)).toBe(50);
    expect(percent(20, 10)).toBe(100);
    expect(percent(0, 0)).toBe(100);
    expect(stateLabel("in sync")).toBe("In sync");
    expect(stateLabel(null)).toBe("Not a target");
  });
});

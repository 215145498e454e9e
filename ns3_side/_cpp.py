"""The C++ half of ns3_side, compiled once per process by cppyy.

Why C++ at all: ns-3 trace sources and ``Simulator::Schedule`` take
``ns3::Callback``s, which cppyy cannot make from a Python callable. Each hook
here is a small struct whose member function ns-3 calls; it stores a
``std::function`` of plain types (cppyy converts a Python callable to that),
and it unpacks ``Ptr<const Packet>`` & co. in C++ so no ns-3 object crosses
into Python on the hot path.

Filtering (EWMA), rate limiting and periodic sampling run here too: a WiFi
PHY fires ``MonitorSnifferRx`` for every frame, and a sample that is only
folded into a filter should not pay a trip into Python (~1 µs each).

Everything lives in namespace ``ipcgw_ns3``; :func:`load` defines it at most
once per process (cling refuses a second definition).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["NsUnavailable", "load"]

CPP_SOURCE = r"""
#include <atomic>
#include <cmath>
#include <functional>
#include <string>

namespace ipcgw_ns3 {
using namespace ns3;

// A filtered, rate-limited source of (sim seconds, a, b) samples.
//
// Offer() folds a sample into an EWMA (alpha = weight of the newest sample,
// 1 = no filtering). Without a period it emits at most once per
// min_interval of sim time; with a period, a self-rescheduling tick emits the
// current filtered value every period (sample-and-hold) and Offer() never
// emits. Stop() makes every later trace call a no-op: ns-3 keeps raw
// pointers to us in trace sources we cannot always disconnect from.
struct Emitter {
    std::function<void(double, double, double)> fn;
    double alpha = 1.0;
    double min_interval = 0.0;
    double period = 0.0;
    double a = 0.0, b = 0.0;
    bool have = false;
    bool stopped = false;
    bool fresh_only = false;  // periodic: skip ticks without a new sample
    bool fresh = false;
    double last_emit = -1e300;
    uint64_t samples = 0;
    uint64_t emitted = 0;
    EventId tick;

    virtual ~Emitter() { tick.Cancel(); }

    void Offer(double x, double y) {
        if (stopped) return;
        ++samples;
        if (!have || alpha >= 1.0) { a = x; b = y; have = true; }
        else { a += alpha * (x - a); b += alpha * (y - b); }
        fresh = true;
        if (period > 0.0) return;
        double now = Simulator::Now().GetSeconds();
        if (now - last_emit < min_interval) return;
        Emit(now);
    }
    void Emit(double now) {
        last_emit = now;
        fresh = false;
        ++emitted;
        if (fn) fn(now, a, b);
    }
    // Subclasses that compute a value per period (loss over a window) override this.
    virtual void Sample() {}
    void StartPeriodic(double first) {
        if (period > 0.0) tick = Simulator::Schedule(Seconds(first), &Emitter::Tick, this);
    }
    void Tick() {
        if (stopped) return;
        Sample();
        if (have && (fresh || !fresh_only)) Emit(Simulator::Now().GetSeconds());
        tick = Simulator::Schedule(Seconds(period), &Emitter::Tick, this);
    }
    void Stop() { stopped = true; tick.Cancel(); fn = nullptr; }
};

// WiFi RSSI / SNR from a PHY's MonitorSnifferRx: a = signal dBm, b = SNR dB.
struct WifiSignal : Emitter {
    Mac48Address from;
    bool filter_from = false;
    void Rx(Ptr<const Packet> packet, uint16_t, WifiTxVector, MpduInfo mpdu,
            SignalNoiseDbm sn, uint16_t) {
        if (stopped) return;
        if (filter_from) {
            WifiMacHeader hdr;
            if (mpdu.type == NORMAL_MPDU) {
                if (packet->PeekHeader(hdr) == 0) return;
            } else {  // (A-)MPDU subframes start with their delimiter
                Ptr<Packet> copy = packet->Copy();
                AmpduSubframeHeader delimiter;
                copy->RemoveHeader(delimiter);
                if (copy->PeekHeader(hdr) == 0) return;
            }
            if (hdr.GetAddr2() != from) return;
        }
        Offer(sn.signal, sn.signal - sn.noise);
    }
    bool Attach(Ptr<WifiPhy> phy) {
        return phy->TraceConnectWithoutContext("MonitorSnifferRx",
                                               MakeCallback(&WifiSignal::Rx, this));
    }
    // Only frames whose transmitter (addr2) is this device address (e.g. the AP's).
    void FilterFrom(const Address& mac) {
        from = Mac48Address::ConvertFrom(mac);
        filter_from = true;
    }
    void FilterFromText(std::string mac) {
        from = Mac48Address(mac.c_str());
        filter_from = true;
    }
};

// Link up/down of any NetDevice (WiFi association, CSMA/P2P carrier): a = 1/0.
struct LinkState : Emitter {
    Ptr<NetDevice> dev;
    void Changed() { if (!stopped) Offer(dev->IsLinkUp() ? 1.0 : 0.0, 0.0); }
    void Attach(Ptr<NetDevice> d) {
        dev = d;
        d->AddLinkChangeCallback(MakeCallback(&LinkState::Changed, this));
    }
    void Now() { Changed(); }
};

// Counts packets on Ptr<const Packet> / Ptr<const QueueDiscItem> traces
// (queue Drop, MacTxDrop, PhyRxDrop, ...): a = running total.
struct PacketCount : Emitter {
    uint64_t count = 0;
    void Hit() { if (!stopped) Offer(double(++count), 0.0); }
    void OnPacket(Ptr<const Packet>) { Hit(); }
    void OnItem(Ptr<const QueueDiscItem>) { Hit(); }
    bool AttachPackets(Ptr<Object> obj, std::string trace) {
        return obj->TraceConnectWithoutContext(trace, MakeCallback(&PacketCount::OnPacket, this));
    }
    bool AttachItems(Ptr<Object> obj, std::string trace) {
        return obj->TraceConnectWithoutContext(trace, MakeCallback(&PacketCount::OnItem, this));
    }
};

// Loss ratio over each period from a "received" and a "lost" packet trace
// (e.g. PhyRxEnd and PhyRxDrop of a receiving device): a = loss, b = packets.
struct LossMeter : Emitter {
    uint64_t ok = 0, lost = 0, ok0 = 0, lost0 = 0;
    void Rx(Ptr<const Packet>) { ++ok; }
    void Lost(Ptr<const Packet>) { ++lost; }
    void Sample() override {
        uint64_t dok = ok - ok0, dlost = lost - lost0;
        ok0 = ok; lost0 = lost;
        if (dok + dlost) Offer(double(dlost) / double(dok + dlost), double(dok + dlost));
    }
    bool Attach(Ptr<Object> obj, std::string rx_trace, std::string lost_trace) {
        return obj->TraceConnectWithoutContext(rx_trace, MakeCallback(&LossMeter::Rx, this))
            && obj->TraceConnectWithoutContext(lost_trace, MakeCallback(&LossMeter::Lost, this));
    }
};

// TCP congestion window (bytes) from TcpSocketBase "CongestionWindow": a = cwnd.
struct TcpCwnd : Emitter {
    void Changed(uint32_t, uint32_t now) { Offer(double(now), 0.0); }
    bool Attach(Ptr<Object> sock) {
        return sock->TraceConnectWithoutContext("CongestionWindow",
                                                MakeCallback(&TcpCwnd::Changed, this));
    }
    bool AttachPath(std::string path) {
        return Config::ConnectWithoutContextFailSafe(path, MakeCallback(&TcpCwnd::Changed, this));
    }
};

// TCP RTT (ms) from TcpSocketBase "RTT" (the smoothed RTT) or "LastRTT": a = ms.
struct TcpRtt : Emitter {
    void Changed(Time, Time now) { Offer(now.GetSeconds() * 1000.0, 0.0); }
    bool Attach(Ptr<Object> sock, std::string trace) {
        return sock->TraceConnectWithoutContext(trace, MakeCallback(&TcpRtt::Changed, this));
    }
    bool AttachPath(std::string path) {
        return Config::ConnectWithoutContextFailSafe(path, MakeCallback(&TcpRtt::Changed, this));
    }
};

// Calls fn(sim seconds) every period of sim time: periodic sampling in Python.
struct Ticker {
    std::function<void(double)> fn;
    double period = 0.0;
    bool stopped = false;
    EventId tick;
    ~Ticker() { tick.Cancel(); }
    void Start(double first) { tick = Simulator::Schedule(Seconds(first), &Ticker::Fire, this); }
    void Fire() {
        if (stopped) return;
        tick = Simulator::Schedule(Seconds(period), &Ticker::Fire, this);
        if (fn) fn(Simulator::Now().GetSeconds());
    }
    void Stop() { stopped = true; tick.Cancel(); fn = nullptr; }
};

// Delivers messages from other threads into the simulation thread: Wake()
// is called by the gateway's receiver thread; ScheduleWithContext is the
// thread-safe entry of both the default and the real-time simulator, and the
// scheduled Drain() runs fn in the simulation thread. Wakes coalesce.
struct Inbox {
    std::function<void()> fn;
    std::atomic<bool> pending{false};
    bool stopped = false;
    void Wake() {
        if (stopped || pending.exchange(true)) return;
        Simulator::ScheduleWithContext(Simulator::NO_CONTEXT, Time(0), &Inbox::Drain, this);
    }
    void Drain() {
        pending = false;
        if (!stopped && fn) fn();
    }
    void Stop() { stopped = true; fn = nullptr; }
};

// Simulator::Stop() now, from Python.
inline void StopNow() { Simulator::Stop(); }

// Runs fn once: after a delay of sim time (At) or at Simulator::Destroy.
struct Once {
    std::function<void()> fn;
    EventId ev;
    ~Once() { ev.Cancel(); }
    void At(double delay) { ev = Simulator::Schedule(Seconds(delay), &Once::Fire, this); }
    void AtDestroy() { Simulator::ScheduleDestroy(&Once::Fire, this); }
    void Fire() { if (fn) { auto f = fn; fn = nullptr; f(); } }
    void Stop() { ev.Cancel(); fn = nullptr; }
};

// For benchmarks: n trace-like calls into one emitter from one sim event.
inline void Burst(Emitter* e, uint64_t n) {
    for (uint64_t i = 0; i < n && !e->stopped; ++i) e->Offer(double(i), 0.0);
}
}  // namespace ipcgw_ns3
"""


class NsUnavailable(ImportError):
    """The ns3 wheel (and so cppyy) is not installed."""


_lock = threading.Lock()
_loaded: tuple[Any, Any] | None = None


def load() -> tuple[Any, Any]:
    """``(ns, ipcgw_ns3)``: the ns-3 bindings and our C++ namespace, defined once."""
    global _loaded
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            try:
                from ns import ns  # ~7 s on first import
            except ImportError as exc:
                raise NsUnavailable(
                    "ns3_side needs the ns-3 Python bindings: pip install 'ipcgw[ns3]' "
                    f"(ns3==3.44.post0); import failed: {exc}"
                ) from exc
            import cppyy

            if not hasattr(cppyy.gbl, "ipcgw_ns3"):
                cppyy.cppdef(CPP_SOURCE)
            cpp = cppyy.gbl.ipcgw_ns3
            # Run() must not hold the GIL, or the receiver thread (and any
            # other Python thread) freezes for the whole simulation; Wake()
            # takes the simulator's mutex, so it must not hold it either.
            ns.Simulator.Run.__release_gil__ = True
            cpp.Inbox.Wake.__release_gil__ = True
            _loaded = (ns, cpp)
    return _loaded

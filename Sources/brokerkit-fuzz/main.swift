// The fuzz driver. Built by scripts/fuzz.sh with -sanitize=fuzzer and BROKERKIT_LIBFUZZER
// defined, it is a libFuzzer program for the target named by BROKERKIT_FUZZ_TARGET (every
// libFuzzer flag works: a corpus directory, -max_total_time=60, a crash file to reproduce).
// Built normally, it runs the files it is given through the target once each:
//
//     swift run brokerkit-fuzz amqp Fuzz/regressions/amqp/*
import BrokerFuzzTargets
import Foundation

#if BROKERKIT_LIBFUZZER
import CFuzzDriver

let target: FuzzTarget = {
    let name = ProcessInfo.processInfo.environment["BROKERKIT_FUZZ_TARGET"] ?? ""
    guard let target = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(
            Data(
                "BROKERKIT_FUZZ_TARGET must be one of \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")), not '\(name)'\n"
                    .utf8
            )
        )
        exit(2)
    }
    return target
}()

// libFuzzer's own main is linked too and needs this symbol; this program's main runs.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    target.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

_ = target
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) })
#else
let arguments = CommandLine.arguments.dropFirst()
guard let name = arguments.first, let target = FuzzTarget(rawValue: name) else {
    FileHandle.standardError.write(
        Data("usage: brokerkit-fuzz \(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")) FILE...\n".utf8)
    )
    exit(2)
}
for path in arguments.dropFirst() {
    guard let data = FileManager.default.contents(atPath: path) else {
        FileHandle.standardError.write(Data("cannot read \(path)\n".utf8))
        exit(1)
    }
    target.run(data)
    print("ok \(path)")
}
#endif

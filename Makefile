# The two commands of the README. Both install what they need (Debian 12) and clean up.
.PHONY: demo test build clean

demo:
	scripts/demo.sh

test:
	scripts/test.sh

build:
	scripts/install-deps.sh build
	swift build

clean:
	scripts/brokers.sh stop || true
	rm -rf .build .run

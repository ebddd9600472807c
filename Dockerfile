# The custom CoreDNS image, for hosts with a Docker engine (or buildah/kaniko).
# Without one, scripts/image builds the same image as an OCI archive.
#   docker build -t REGISTRY/coredns-serviceentry:TAG .
# Multi-arch, cross-compiled on the build machine (no emulation):
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/coredns-serviceentry:TAG --push .
FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static, so that the runtime image needs no libc; setcap lets the nonroot
# user bind port 53, as the upstream CoreDNS image does.
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags=-s -o /coredns ./cmd/coredns \
 && apt-get update && apt-get install -y --no-install-recommends libcap2-bin \
 && setcap cap_net_bind_service=+ep /coredns

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/
COPY --from=build /coredns /coredns
USER 65532:65532
EXPOSE 53 53/udp 9153
ENTRYPOINT ["/coredns"]

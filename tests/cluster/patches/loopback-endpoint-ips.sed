# Lets Endpoints and EndpointSlices hold loopback addresses (127.0.0.0/8).
# Applied by scripts/cluster-build.sh to k8s.io/kubernetes'
# pkg/apis/core/validation/validation.go (ValidateEndpointIP) through
# `go build -overlay`; the module cache is not modified. Our pods run as local
# processes on loopback pod IPs, which upstream validation refuses in
# Endpoints/EndpointSlices ("may not be in the loopback range"). Nothing else
# about the API server changes.
s/^\tif ip\.IsLoopback() {$/\tif ip.IsLoopback() \&\& false { \/\/ medembed test cluster: loopback pod IPs allowed/
